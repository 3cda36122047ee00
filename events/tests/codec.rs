//! The record codec: JSON round trips, refusal of tampered or malformed bytes, the documented
//! byte layout, and the JSON forms of the value types.

mod common;

use common::{all_samples, golden_envelope, golden_record, golden_samples, seal, Sample};
use ledger_events::{
    encode_record_into, Actor, ActorKind, CheckInOutcome, Cnpj, CodecError, ContingencyKind,
    CounterKey, Envelope, Event, HardwareId, HardwareKey, Hash, LicenseId, Product, Record,
    RecordJson, RecordView, RefusalReason, RenewalCause, StreamId, TerminalNumber, EVENT_TYPES,
    MAX_PAYLOAD_BYTES, MAX_RECORD_BYTES, MIN_RECORD_BYTES,
};
use proptest::prelude::*;
use serde_json::json;
use sha2::{Digest, Sha256};

fn golden(label: &str) -> Sample {
    all_samples()
        .into_iter()
        .find(|s| s.label == label)
        .unwrap_or_else(|| panic!("no sample {label}"))
}

/// The golden LicenseGranted record: bytes and owned record.
fn granted_record() -> (Vec<u8>, Record) {
    golden_record(&golden("LicenseGranted"))
}

// ---------------------------------------------------------------------------------------------
// JSON round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn every_sample_survives_a_json_round_trip_byte_for_byte() {
    for s in all_samples() {
        let (bytes, record) = golden_record(&s);
        assert_eq!(Record::decode(&bytes).unwrap(), record, "{}", s.label);
        assert_eq!(record.event().unwrap(), s.event, "{}", s.label);

        let json = record.to_json().unwrap();
        assert_eq!(json.data, s.event.data_json(), "{}", s.label);
        let back = Record::from_json(&json).unwrap();
        assert_eq!(back, record, "{}", s.label);
        assert_eq!(back.encode().unwrap(), bytes, "{}", s.label);

        let text = serde_json::to_string(&json).unwrap();
        let parsed: RecordJson = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, json, "{}", s.label);
        let back = Record::from_json(&parsed).unwrap();
        assert_eq!(back.encode().unwrap(), bytes, "{}", s.label);
    }
}

#[test]
fn every_sample_payload_round_trips_through_postcard_and_json_data() {
    for s in all_samples() {
        let payload = s.event.encode_payload().unwrap();
        let decoded =
            Event::decode_payload(s.event.event_type(), s.event.schema_version(), &payload)
                .unwrap_or_else(|e| panic!("{}: {e}", s.label));
        assert_eq!(decoded, s.event, "{}", s.label);
        let from_json = Event::from_data_json(s.event.event_type(), s.event.data_json()).unwrap();
        assert_eq!(from_json, s.event, "{}", s.label);
        // The stream follows from the ids the event carries.
        assert_eq!(decoded.stream_id(), s.event.stream_id(), "{}", s.label);
    }
}

#[test]
fn json_of_a_record_shows_the_envelope_and_readable_data() {
    let (_, record) = golden_record(&golden("TerminalCheckedIn"));
    let value = serde_json::to_value(record.to_json().unwrap()).unwrap();
    assert_eq!(value["position"], json!(4242));
    assert_eq!(
        value["stream_id"],
        json!("terminal-11222333000181-50026B77825EECA5")
    );
    assert_eq!(value["stream_version"], json!(7));
    assert_eq!(value["event_type"], json!("TerminalCheckedIn"));
    assert_eq!(value["schema_version"], json!(1));
    assert_eq!(value["recorded_at"], json!("2023-05-01T14:32:07.123456Z"));
    assert_eq!(
        value["actor"],
        json!({"kind": "terminal", "name": "50026B77825EECA5"})
    );
    assert_eq!(
        value["prev_hash"],
        json!("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20")
    );
    assert_eq!(value["hash"], json!(record.envelope.hash.to_string()));
    assert_eq!(value["payload"], json!(hex::encode(&record.payload)));
    assert_eq!(
        value["data"],
        json!({
            "cnpj": "11222333000181",
            "product": "easycash",
            "hardware_id": "50026B77825EECA5",
            "hardware_key": "88A7B56C2B3F326F91362A182483F63E",
            "license_id": "002438",
            "ip": "192.168.0.198",
            "program_version": "2.0.12.1",
            "caixa": "03",
            "equipamento": "01",
            "outcome": {"result": "valid", "expires_on": "2023-05-31"}
        })
    );
}

// ---------------------------------------------------------------------------------------------
// from_json refuses tampering
// ---------------------------------------------------------------------------------------------

#[test]
fn from_json_refuses_data_that_does_not_match_the_payload() {
    let (_, record) = granted_record();
    let mut json = record.to_json().unwrap();
    json.data["expires_on"] = json!("2023-06-30");
    let err = Record::from_json(&json).unwrap_err();
    assert!(
        matches!(&err, CodecError::Payload { event_type, problem }
            if event_type == "LicenseGranted" && problem.contains("does not match")),
        "{err:?}"
    );

    // A resource flipped in `data` only.
    let mut json = record.to_json().unwrap();
    json.data["resources"]["habilita_preventa"] = json!(true);
    assert!(matches!(
        Record::from_json(&json),
        Err(CodecError::Payload { .. })
    ));

    // The outcome of a check-in changed in `data` only.
    let (_, record) = golden_record(&golden("TerminalCheckedIn"));
    let mut json = record.to_json().unwrap();
    json.data["outcome"] = json!({"result": "refused", "reason": "license_expired"});
    assert!(matches!(
        Record::from_json(&json),
        Err(CodecError::Payload { .. })
    ));
}

#[test]
fn from_json_refuses_data_that_is_not_valid() {
    let (_, record) = granted_record();
    let mut json = record.to_json().unwrap();
    json.data["cnpj"] = json!("11.222.333/0001-82");
    let err = Record::from_json(&json).unwrap_err();
    assert!(err.to_string().contains("CNPJ"), "{err}");

    let mut json = record.to_json().unwrap();
    json.data.as_object_mut().unwrap().remove("expires_on");
    assert!(Record::from_json(&json).is_err());
}

#[test]
fn from_json_refuses_a_changed_hash_prev_hash_or_envelope_field() {
    let (_, record) = granted_record();
    let original = record.to_json().unwrap();
    let hash_mismatch = |json: &RecordJson| {
        let err = Record::from_json(json).unwrap_err();
        assert!(matches!(err, CodecError::HashMismatch { .. }), "{err:?}");
    };

    let mut json = original.clone();
    json.hash.0[31] ^= 1;
    hash_mismatch(&json);

    let mut json = original.clone();
    json.prev_hash = Hash::ZERO;
    hash_mismatch(&json);

    let mut json = original.clone();
    json.position += 1;
    hash_mismatch(&json);

    let mut json = original.clone();
    json.stream_version -= 1;
    hash_mismatch(&json);

    let mut json = original.clone();
    json.recorded_at += chrono::Duration::microseconds(1);
    hash_mismatch(&json);

    let mut json = original.clone();
    json.actor = Actor::operator("suporte.bruno").unwrap();
    hash_mismatch(&json);

    let mut json = original.clone();
    json.correlation_id = uuid::Uuid::nil();
    hash_mismatch(&json);

    // Payload and data changed together, consistently: the hash still catches it.
    let mut json = original.clone();
    let mut event = record.event().unwrap();
    if let Event::License(ledger_events::LicenseEvent::Granted(g)) = &mut event {
        g.expires_on = common::date("2099-12-31");
    }
    json.data = event.data_json();
    json.payload = hex::encode(event.encode_payload().unwrap());
    hash_mismatch(&json);

    // Payload that is not hex.
    let mut json = original.clone();
    json.payload.push('z');
    assert!(matches!(
        Record::from_json(&json),
        Err(CodecError::BadField {
            field: "payload",
            ..
        })
    ));

    // Sub-microsecond time cannot be what was stored.
    let mut json = original;
    json.recorded_at += chrono::Duration::nanoseconds(1);
    assert!(Record::from_json(&json).is_err());
}

#[test]
fn record_json_refuses_invalid_envelope_values() {
    let (_, record) = granted_record();
    let good = serde_json::to_value(record.to_json().unwrap()).unwrap();
    for (field, bad) in [
        ("stream_id", json!("License 002438")),
        ("actor", json!({"kind": "operator", "name": ""})),
        ("actor", json!({"kind": "robot", "name": "x"})),
        ("hash", json!("abc")),
        ("event_id", json!("not-a-uuid")),
    ] {
        let mut v = good.clone();
        v[field] = bad.clone();
        assert!(
            serde_json::from_value::<RecordJson>(v).is_err(),
            "{field} = {bad}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Record::decode refuses malformed bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_single_flipped_bit_anywhere_is_refused() {
    let (bytes, _) = granted_record();
    for offset in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[offset] ^= 1 << bit;
            assert!(
                Record::decode(&b).is_err(),
                "flip of bit {bit} at offset {offset} accepted"
            );
            // The view parses or not, but never claims a verified hash.
            if let Ok(view) = RecordView::parse(&b) {
                assert!(view.verify_hash().is_err(), "offset {offset} bit {bit}");
            }
        }
    }
}

#[test]
fn every_truncation_is_refused() {
    let (bytes, _) = granted_record();
    for len in 0..bytes.len() {
        let err = Record::decode(&bytes[..len]).unwrap_err();
        assert!(
            matches!(err, CodecError::Truncated { .. }),
            "length {len}: {err:?}"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let (bytes, _) = granted_record();
    let mut b = bytes.clone();
    b.push(0);
    assert_eq!(
        Record::decode(&b).unwrap_err(),
        CodecError::TrailingBytes { extra: 1 }
    );
    // Two records back to back are not one record.
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    assert_eq!(
        Record::decode(&two).unwrap_err(),
        CodecError::TrailingBytes { extra: bytes.len() }
    );
}

/// Builds a record by hand from the layout documented in `codec.rs`, with a given
/// `payload_len` field, and a correct hash.
fn hand_built(env: &Envelope, payload_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&env.prev_hash.0);
    b.push(1);
    b.extend_from_slice(&env.position.to_be_bytes());
    b.extend_from_slice(&env.stream_version.to_be_bytes());
    b.extend_from_slice(&env.recorded_at.timestamp_micros().to_be_bytes());
    b.extend_from_slice(env.event_id.as_bytes());
    b.extend_from_slice(env.correlation_id.as_bytes());
    b.extend_from_slice(&env.schema_version.to_be_bytes());
    b.push(match env.actor.kind {
        ActorKind::Operator => 1,
        ActorKind::Terminal => 2,
        ActorKind::System => 3,
    });
    for s in [
        env.stream_id.as_str(),
        env.event_type.as_str(),
        env.actor.name.as_str(),
    ] {
        b.push(u8::try_from(s.len()).unwrap());
        b.extend_from_slice(s.as_bytes());
    }
    b.extend_from_slice(&payload_len.to_be_bytes());
    b.extend_from_slice(payload);
    let hash = Sha256::digest(&b);
    b.extend_from_slice(&hash);
    b
}

fn granted_envelope() -> Envelope {
    let s = golden("LicenseGranted");
    golden_envelope(&s.event, "LicenseGranted", 1, &s.actor)
}

#[test]
fn the_encoder_writes_the_documented_layout() {
    for s in all_samples() {
        let (bytes, record) = golden_record(&s);
        let env = &record.envelope;
        assert_eq!(
            hand_built(env, record.payload.len() as u32, &record.payload),
            bytes,
            "{}",
            s.label
        );
        // An auditor needs nothing but SHA-256: hash all but the last 32 bytes.
        let (body, hash) = bytes.split_at(bytes.len() - 32);
        assert_eq!(Sha256::digest(body).as_slice(), hash);
        assert_eq!(&bytes[..32], &env.prev_hash.0);
        assert!(bytes.len() >= MIN_RECORD_BYTES && bytes.len() <= MAX_RECORD_BYTES);

        let view = RecordView::parse(&bytes).unwrap();
        assert_eq!(view.position(), env.position);
        assert_eq!(view.stream_version(), env.stream_version);
        assert_eq!(view.stream_id().unwrap(), env.stream_id.as_str());
        assert_eq!(view.stream_id_bytes(), env.stream_id.as_str().as_bytes());
        assert_eq!(view.event_type().unwrap(), env.event_type);
        assert_eq!(view.schema_version(), env.schema_version);
        assert_eq!(view.event_id(), env.event_id);
        assert_eq!(view.correlation_id(), env.correlation_id);
        assert_eq!(view.prev_hash(), env.prev_hash);
        assert_eq!(view.hash(), env.hash);
        assert_eq!(view.computed_hash(), env.hash);
        assert_eq!(view.payload(), record.payload.as_slice());
        assert_eq!(view.bytes(), bytes.as_slice());
        assert_eq!(view.envelope().unwrap(), *env);
        assert_eq!(view.event().unwrap(), s.event);
    }
}

#[test]
fn a_payload_length_above_the_maximum_is_refused() {
    let env = granted_envelope();
    let too_long = MAX_PAYLOAD_BYTES + 1;
    let payload_len_at =
        92 + 3 + env.stream_id.as_str().len() + env.event_type.len() + env.actor.name.len();

    // Well-formed in every other way: the payload is there and the hash is right.
    let bytes = hand_built(&env, too_long as u32, &vec![0; too_long]);
    assert_eq!(
        u32::from_be_bytes(
            bytes[payload_len_at..payload_len_at + 4]
                .try_into()
                .unwrap()
        ),
        too_long as u32
    );
    for err in [
        Record::decode(&bytes).unwrap_err(),
        RecordView::parse(&bytes).unwrap_err(),
    ] {
        assert!(
            matches!(err, CodecError::BadField { field: "payload_len", offset, .. }
                if offset == payload_len_at),
            "{err:?}"
        );
    }

    // A huge length in a short record is refused the same way, before any allocation.
    let bytes = hand_built(&env, u32::MAX, b"");
    assert!(matches!(
        Record::decode(&bytes),
        Err(CodecError::BadField {
            field: "payload_len",
            ..
        })
    ));

    // The encoder refuses it too; exactly the maximum is fine.
    let mut out = Vec::new();
    assert!(matches!(
        encode_record_into(&mut out, &env, &vec![0; too_long]),
        Err(CodecError::TooLarge {
            field: "payload",
            ..
        })
    ));
    let (bytes, record) = seal(&env, &vec![0; MAX_PAYLOAD_BYTES]);
    assert_eq!(
        bytes.len(),
        hand_built(&env, 0, b"").len() + MAX_PAYLOAD_BYTES
    );
    assert_eq!(Record::decode(&bytes).unwrap(), record);
}

#[test]
fn a_resealed_record_with_bad_header_values_is_refused() {
    let env = granted_envelope();
    let payload = golden("LicenseGranted").event.encode_payload().unwrap();
    let good = hand_built(&env, payload.len() as u32, &payload);
    let reseal = |mut b: Vec<u8>| {
        let n = b.len() - 32;
        let hash = Sha256::digest(&b[..n]);
        b[n..].copy_from_slice(&hash);
        b
    };

    let mut b = good.clone();
    b[32] = 2; // format
    assert!(matches!(
        Record::decode(&reseal(b)),
        Err(CodecError::BadField {
            field: "format",
            offset: 32,
            ..
        })
    ));

    let mut b = good.clone();
    b[91] = 9; // actor kind
    assert!(matches!(
        Record::decode(&reseal(b)),
        Err(CodecError::BadField {
            field: "actor_kind",
            ..
        })
    ));

    let mut b = good.clone();
    b[93] = b' '; // first byte of the stream id
    assert!(matches!(
        Record::decode(&reseal(b)),
        Err(CodecError::BadField {
            field: "stream_id",
            ..
        })
    ));

    let mut b = good.clone();
    b[93] = 0xFF; // not UTF-8
    assert!(matches!(
        Record::decode(&reseal(b)),
        Err(CodecError::BadField {
            field: "stream_id",
            ..
        })
    ));

    let mut b = good.clone();
    b[49..57].copy_from_slice(&i64::MAX.to_be_bytes()); // recorded_at out of range
    assert!(matches!(
        Record::decode(&reseal(b)),
        Err(CodecError::BadField {
            field: "recorded_at",
            ..
        })
    ));

    // Unchanged, the hand-built record decodes.
    assert!(Record::decode(&reseal(good)).is_ok());
}

#[test]
fn the_encoder_refuses_what_the_decoder_would_refuse() {
    let env = granted_envelope();
    let mut out = Vec::new();

    let bad_time = Envelope {
        recorded_at: env.recorded_at + chrono::Duration::nanoseconds(500),
        ..env.clone()
    };
    assert!(matches!(
        encode_record_into(&mut out, &bad_time, b""),
        Err(CodecError::TooLarge {
            field: "recorded_at",
            ..
        })
    ));

    for name in [
        String::new(),
        "x".repeat(Actor::MAX_NAME_LEN + 1),
        "a\nb".into(),
    ] {
        let bad_actor = Envelope {
            actor: Actor {
                kind: ActorKind::Operator,
                name,
            },
            ..env.clone()
        };
        assert!(matches!(
            encode_record_into(&mut out, &bad_actor, b""),
            Err(CodecError::TooLarge {
                field: "actor_name",
                ..
            })
        ));
    }

    let long_type = Envelope {
        event_type: "T".repeat(256),
        ..env.clone()
    };
    assert!(matches!(
        encode_record_into(&mut out, &long_type, b""),
        Err(CodecError::TooLarge {
            field: "event_type",
            ..
        })
    ));
    assert!(out.is_empty(), "a refused record must write nothing");

    // A record whose stored hash is wrong does not encode.
    let (_, mut record) = granted_record();
    record.envelope.hash = Hash::ZERO;
    assert!(matches!(
        record.encode(),
        Err(CodecError::HashMismatch { .. })
    ));
}

#[test]
fn encode_record_into_appends_and_returns_the_hash() {
    let samples = golden_samples();
    let (a, ra) = golden_record(&samples[0]);
    let (b, rb) = golden_record(&samples[1]);
    let mut out = a.clone();
    let hash = encode_record_into(&mut out, &rb.envelope, &rb.payload).unwrap();
    assert_eq!(hash, rb.envelope.hash);
    assert_eq!(&out[..a.len()], a.as_slice());
    assert_eq!(&out[a.len()..], b.as_slice());
    assert_eq!(Record::decode(&out[..a.len()]).unwrap(), ra);
}

// ---------------------------------------------------------------------------------------------
// Never panic
// ---------------------------------------------------------------------------------------------

fn decode_everything(bytes: &[u8]) {
    if let Ok(view) = RecordView::parse(bytes) {
        let _ = view.verify_hash();
        let _ = view.envelope();
        let _ = view.event();
        let _ = view.stream_id();
        let _ = view.event_type();
    }
    if let Ok(record) = Record::decode(bytes) {
        let _ = record.event();
        let _ = record.to_json();
    }
    for &(event_type, version) in EVENT_TYPES {
        let _ = Event::decode_payload(event_type, version, bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_everything(&bytes);
    }

    /// Arbitrary payloads inside well-formed, correctly hashed records: every stage past
    /// the record structure sees them.
    #[test]
    fn arbitrary_payloads_in_valid_records_never_panic(
        type_index in 0..EVENT_TYPES.len(),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let (event_type, version) = EVENT_TYPES[type_index];
        let mut env = granted_envelope();
        env.event_type = event_type.to_owned();
        env.schema_version = version;
        let (bytes, record) = seal(&env, &payload);
        prop_assert_eq!(Record::decode(&bytes).unwrap(), record.clone());
        if let Ok(event) = record.event() {
            // Whatever decodes re-encodes to something that decodes to the same event.
            let again = event.encode_payload().unwrap();
            prop_assert_eq!(Event::decode_payload(event_type, version, &again).unwrap(), event);
            let json = record.to_json().unwrap();
            prop_assert_eq!(Record::from_json(&json).unwrap(), record);
        }
    }

    /// Random edits of a valid record are refused, never accepted and never a panic.
    #[test]
    fn edited_records_are_refused(
        sample_index in 0..24usize,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..8),
    ) {
        let samples = golden_samples();
        let (bytes, _) = golden_record(&samples[sample_index % samples.len()]);
        let mut b = bytes.clone();
        let len = b.len();
        for (at, x) in &edits {
            b[at.index(len)] ^= x;
        }
        decode_everything(&b);
        if b != bytes {
            prop_assert!(Record::decode(&b).is_err());
        }
    }

    /// Truncated or extended valid payloads never panic and never decode to a value when
    /// shortened.
    #[test]
    fn cut_payloads_are_refused(sample_index in 0..40usize, cut in 1..64usize) {
        let samples = all_samples();
        let s = &samples[sample_index % samples.len()];
        let payload = s.event.encode_payload().unwrap();
        let short = &payload[..payload.len().saturating_sub(cut)];
        prop_assert!(
            Event::decode_payload(s.event.event_type(), s.event.schema_version(), short).is_err()
        );
        let mut long = payload.clone();
        long.resize(payload.len() + cut, 0);
        let result = Event::decode_payload(s.event.event_type(), s.event.schema_version(), &long);
        let refused = matches!(result, Err(CodecError::Payload { .. }));
        prop_assert!(refused, "{}: {:?}", s.label, result);
    }
}

// ---------------------------------------------------------------------------------------------
// JSON forms of the value types
// ---------------------------------------------------------------------------------------------

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn license_and_contract_ids_are_six_digit_strings_in_json_and_integers_in_binary() {
    let id = common::license_id();
    assert_eq!(serde_json::to_string(&id).unwrap(), r#""002438""#);
    assert_eq!(
        serde_json::from_str::<LicenseId>(r#""002438""#).unwrap(),
        id
    );
    assert_eq!(serde_json::from_str::<LicenseId>(r#""2438""#).unwrap(), id);
    assert!(serde_json::from_str::<LicenseId>("2438").is_err());
    assert!(serde_json::from_str::<LicenseId>(r#""000000""#).is_err());
    assert!(serde_json::from_str::<LicenseId>(r#""1234567""#).is_err());
    // 2438 as a postcard varint.
    assert_eq!(postcard::to_stdvec(&id).unwrap(), [0x86, 0x13]);
    assert!(postcard::from_bytes::<LicenseId>(&[0x00]).is_err());
    assert_eq!(to_json(&common::contract_id()), json!("000731"));
}

#[test]
fn hex_values_are_uppercase_strings_in_json_and_raw_bytes_in_binary() {
    let hw: HardwareId = serde_json::from_str(r#""50026b77825eeca5""#).unwrap();
    assert_eq!(hw, common::hardware_id());
    assert_eq!(to_json(&hw), json!("50026B77825EECA5"));
    assert_eq!(
        postcard::to_stdvec(&hw).unwrap(),
        [0x50, 0x02, 0x6B, 0x77, 0x82, 0x5E, 0xEC, 0xA5]
    );
    assert!(serde_json::from_str::<HardwareId>(r#""50026B77825EECA""#).is_err());
    assert!(serde_json::from_str::<HardwareId>(r#""50026B77825EECAZ""#).is_err());

    let key: HardwareKey = serde_json::from_str(r#""88a7b56c2b3f326f91362a182483f63e""#).unwrap();
    assert_eq!(to_json(&key), json!("88A7B56C2B3F326F91362A182483F63E"));
    assert_eq!(postcard::to_stdvec(&key).unwrap().len(), 16);

    assert_eq!(to_json(&common::serial()), json!("50026B77605FA3F8"));
    assert_eq!(
        to_json(&common::activation_code()),
        json!("50026B7793D68451")
    );
    // The counter-key is stored compact; the grouped form is for display only.
    let ck = common::counter_key();
    assert_eq!(to_json(&ck), json!("AF67142D1048F615"));
    assert_eq!(ck.grouped(), "AF67 142D 1048 F615");
    assert!(serde_json::from_str::<CounterKey>(r#""AF67 142D 1048 F615""#).is_err());
}

#[test]
fn cnpj_json_is_the_bare_form_and_an_invalid_one_is_refused_by_name() {
    assert_eq!(to_json(&common::cnpj()), json!("11222333000181"));
    assert_eq!(to_json(&common::cnpj_alnum()), json!("12ABC34501DE35"));
    let punctuated: Cnpj = serde_json::from_str(r#""11.222.333/0001-81""#).unwrap();
    assert_eq!(punctuated, common::cnpj());
    let lower: Cnpj = serde_json::from_str(r#""12.abc.345/01de-35""#).unwrap();
    assert_eq!(lower, common::cnpj_alnum());

    for bad in [
        "11222333000182",
        "12ABC34501DE36",
        "1122233300018",
        "00000000000000",
    ] {
        let err = serde_json::from_str::<Cnpj>(&format!("\"{bad}\"")).unwrap_err();
        assert!(err.to_string().contains("invalid CNPJ"), "{bad}: {err}");
    }
    // Inside an event, the message still names the CNPJ.
    let err = Event::from_data_json(
        "CustomerRegistered",
        json!({"cnpj": "11222333000182", "trade_name": "Mercado Bom Preço", "since": "2023-05-01"}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("CNPJ"), "{err}");
}

#[test]
fn small_values_have_readable_json_forms() {
    assert_eq!(to_json(&TerminalNumber::parse("3").unwrap()), json!("03"));
    assert_eq!(
        serde_json::from_str::<TerminalNumber>(r#""03""#).unwrap(),
        TerminalNumber::new(3).unwrap()
    );
    assert_eq!(to_json(&Product::EasyCash), json!("easycash"));
    assert_eq!(to_json(&Product::TefIws), json!("tef_iws"));
    assert!(serde_json::from_str::<Product>(r#""EasyCash""#).is_err());
    assert_eq!(to_json(&common::program_version()), json!("2.0.12.1"));
    assert_eq!(
        to_json(&StreamId::license(common::license_id())),
        json!("license-002438")
    );
    assert!(serde_json::from_str::<StreamId>(r#""License 002438""#).is_err());
    assert_eq!(
        to_json(&common::terminal_actor()),
        json!({"kind": "terminal", "name": "50026B77825EECA5"})
    );
    assert_eq!(to_json(&Hash::ZERO), json!("0".repeat(64)));
    assert_eq!(
        to_json(&common::resources(&[
            ("habilita_dav", ledger_events::ResourceValue::Bool(true)),
            (
                "habilita_preventa",
                ledger_events::ResourceValue::Bool(false)
            ),
        ])),
        json!({"habilita_dav": true, "habilita_preventa": false})
    );
}

#[test]
fn tagged_payload_enums_have_their_json_shapes() {
    let d = common::date;
    let cases = [
        (
            to_json(&CheckInOutcome::Valid {
                expires_on: d("2023-05-31"),
            }),
            json!({"result": "valid", "expires_on": "2023-05-31"}),
        ),
        (
            to_json(&CheckInOutcome::ExpiringSoon {
                expires_on: d("2023-05-31"),
                days_left: 3,
            }),
            json!({"result": "expiring_soon", "expires_on": "2023-05-31", "days_left": 3}),
        ),
        (
            to_json(&CheckInOutcome::Contingency {
                kind: ContingencyKind::Intelliweb,
                expires_on: d("2023-06-07"),
            }),
            json!({"result": "contingency", "kind": "intelliweb", "expires_on": "2023-06-07"}),
        ),
        (
            to_json(&CheckInOutcome::Refused {
                reason: RefusalReason::NoLicenseAvailable,
            }),
            json!({"result": "refused", "reason": "no_license_available"}),
        ),
        (
            to_json(&RenewalCause::Contract {
                contract_id: common::contract_id(),
            }),
            json!({"by": "contract", "contract_id": "000731"}),
        ),
        (to_json(&RenewalCause::Manual), json!({"by": "manual"})),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
    assert_eq!(
        serde_json::from_value::<CheckInOutcome>(
            json!({"expires_on": "2023-05-31", "days_left": 3, "result": "expiring_soon"})
        )
        .unwrap(),
        CheckInOutcome::ExpiringSoon {
            expires_on: d("2023-05-31"),
            days_left: 3
        }
    );
    assert!(serde_json::from_value::<CheckInOutcome>(json!({"result": "maybe"})).is_err());
    assert!(serde_json::from_value::<RenewalCause>(json!({"by": "contract"})).is_err());
}

#[test]
fn from_json_refuses_a_payload_or_hash_that_is_not_hex() {
    let (_, record) = granted_record();
    let good = record.to_json().unwrap();
    assert_eq!(Record::from_json_owned(good.clone()).unwrap(), record);
    for payload in [
        format!("{}0", good.payload),
        format!("zz{}", &good.payload[2..]),
    ] {
        let mut json = good.clone();
        json.payload = payload;
        assert!(
            matches!(
                Record::from_json(&json),
                Err(CodecError::BadField {
                    field: "payload",
                    ..
                })
            ),
            "{}",
            json.payload
        );
    }
    let hex = good.hash.to_string();
    assert_eq!(
        ledger_events::Hash::parse(&hex.to_uppercase()).unwrap(),
        good.hash
    );
    for bad in [&hex[1..], &format!("{hex}0"), &format!("g{}", &hex[1..])] {
        assert!(ledger_events::Hash::parse(bad).is_err(), "{bad}");
    }
}
