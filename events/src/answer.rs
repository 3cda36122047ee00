//! Signed check-in answers: what the server tells a terminal, signed with Ed25519 so that a
//! fake server on the customer's LAN cannot unlock a terminal.
//!
//! The server builds a [`CheckInAnswer`], [`sign`]s it with its private key, and sends the
//! [`SignedAnswer`] as JSON. The terminal holds the server's public key (or several, chosen by
//! `key_id`), checks the signature with [`SignedAnswer::verify_with_nonce`] against its own
//! subject (see below) and the nonce it sent (so an old answer cannot be replayed, nor one for
//! another terminal be passed off), and only then acts on `outcome`.
//!
//! The signature does not cover the JSON: it covers the *signed message* defined below, which
//! a terminal rebuilds from the decoded fields. JSON whitespace, key order and escapes
//! therefore do not matter, and a terminal vendor can reimplement the check in any language.
//!
//! # Versions and the subject
//!
//! An answer names its subject: the customer (`cnpj`), the `product` and the terminal
//! (`hardware_id`). Version 2 (what servers sign today) covers all three; version 1 (older
//! servers; its JSON has no `version` field) covered product and hardware id but not the
//! CNPJ. Terminals verify with [`SignedAnswer::verify_with_nonce`] or
//! [`SignedAnswer::verify_for`], and answers of a relay with
//! [`RelayCertificate::verify_answer`]: each takes the expected [`Subject`] and refuses an
//! answer about anyone else. A version 1 answer is verified under version 1 rules (product and
//! hardware id compared; its CNPJ is checked only through a relay certificate's).
//!
//! # Signed message (versions 1 and 2)
//!
//! All integers are big-endian. `str` is a `u32` byte length followed by the UTF-8 bytes.
//! `opt(T)` is one byte `0x00` (absent) or `0x01` followed by `T`. Dates are `i32` days from
//! the Common Era (0001-01-01 is 1, 2023-03-30 is 738609).
//!
//! ```text
//! signed message = key_id: str || canonical bytes
//!
//! canonical bytes:
//!   tag           25 bytes   "license-ledger/answer/v1" or ".../v2", then one 0x00 byte
//!   cnpj          str        version 2 only: the 14 characters of the customer's CNPJ
//!   license_id    opt(u32)   1..=999999 (shown as 002438)
//!   hardware_id   8 bytes    raw bytes of the 16-hex hardware id
//!   hardware_key  16 bytes   raw bytes of the 32-hex hardware key
//!   product       str        product code, e.g. "easycash"
//!   outcome       str        outcome code, e.g. "VALID", "EXPIRING" (see OutcomeCode)
//!   expires_on    opt(i32)   date shown to the terminal
//!   days_left     opt(i64)
//!   resources     u32 count, then per entry in ascending byte order of keys:
//!                   u8 key length, key bytes (ASCII),
//!                   u8 value tag, then 0 = bool: 1 byte 0x00/0x01
//!                                      1 = int:  i64
//!                                      2 = text: str
//!   messages      u32 count, then each message as str, in display order
//!   issued_at     i64        microseconds since 1970-01-01T00:00:00Z
//!   nonce         opt(str)   the terminal's nonce, echoed
//! ```
//!
//! The signature is Ed25519 (RFC 8032, pure, no pre-hash) over the signed message, sent as
//! 128 lower-case hex digits. Binding `key_id` into the message means a signature cannot be
//! presented under another key's name. Verification is strict (`verify_strict`: canonical
//! `S`, no small-order keys or `R`).
//!
//! Every field is fixed-width or length-prefixed, so two different answers never share a
//! message. The unit tests pin one answer's canonical bytes and signature; use them as test
//! vectors.
//!
//! # JSON
//!
//! ```json
//! {"answer": {"version": 2, "cnpj": "11222333000181", "license_id": "002438", "hardware_id": "50026B77825EECA5",
//!             "hardware_key": "88A7B56C2B3F326F91362A182483F63E", "product": "easycash",
//!             "outcome": "EXPIRING", "expires_on": "2023-03-30", "days_left": 1,
//!             "resources": {"habilita_dav": true}, "messages": ["..."],
//!             "issued_at": "2023-03-27T17:31:32.123456Z", "nonce": "n0nce-ABC_123"},
//!  "key_id": "...", "signature": "..."}
//! ```
//!
//! Decoding checks every value (ids, dates, the nonce's form, the limits on messages);
//! verification checks them again, since the fields are public.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use ed25519_dalek::{Signature, Signer};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::envelope::truncate_to_micros;
use crate::values::{Cnpj, HardwareId, HardwareKey, LicenseId, Product, ResourceValue, Resources};

/// First bytes of a version 1 canonical answer: names the format and its version.
const TAG_V1: &[u8] = b"license-ledger/answer/v1\0";
/// First bytes of a version 2 canonical answer (followed by the CNPJ).
const TAG_V2: &[u8] = b"license-ledger/answer/v2\0";

/// The answer version servers sign: 2, which covers the customer's CNPJ.
pub const ANSWER_VERSION: u8 = 2;
/// The first answer version (no CNPJ); still verified, under its own rules.
pub const ANSWER_VERSION_1: u8 = 1;

fn version_1() -> u8 {
    ANSWER_VERSION_1
}

/// Most characters in a terminal nonce.
pub const MAX_NONCE_CHARS: usize = 64;
/// Most messages in one answer.
pub const MAX_MESSAGES: usize = 16;
/// Most characters in one message.
pub const MAX_MESSAGE_CHARS: usize = 500;
/// Most bytes in a key id.
pub const MAX_KEY_ID_BYTES: usize = 64;
/// Hex digits in an encoded signature (64 bytes).
pub const SIGNATURE_HEX_LEN: usize = 128;

/// Why an answer was refused or could not be checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The signature does not match the answer and key id under this public key: the answer
    /// was altered, signed by another key, or forged.
    #[error("the answer's signature is not valid for this key")]
    BadSignature,
    /// The signature is not 128 hex digits.
    #[error("the signature must be {SIGNATURE_HEX_LEN} hex digits")]
    BadSignatureEncoding,
    /// The answer does not echo the nonce the terminal sent (a replayed or misrouted answer).
    #[error("the answer does not echo the nonce this terminal sent")]
    NonceMismatch,
    /// A nonce is not 1 to 64 characters of `A-Z a-z 0-9 _ -`.
    #[error("a nonce must be 1 to {MAX_NONCE_CHARS} characters of A-Z a-z 0-9 _ -")]
    InvalidNonce,
    /// The key id is empty or longer than [`MAX_KEY_ID_BYTES`].
    #[error("a key id must be 1 to {MAX_KEY_ID_BYTES} bytes")]
    InvalidKeyId,
    /// More than [`MAX_MESSAGES`] messages.
    #[error("{count} messages, at most {MAX_MESSAGES}")]
    TooManyMessages {
        /// How many there were.
        count: usize,
    },
    /// A message longer than [`MAX_MESSAGE_CHARS`] characters.
    #[error("message {index} has more than {MAX_MESSAGE_CHARS} characters")]
    MessageTooLong {
        /// Its position, from 0.
        index: usize,
    },
    /// An answer version this code does not know.
    #[error("answer version {0} is not known (1 and 2 are)")]
    UnknownVersion(u8),
    /// A version 2 answer without a CNPJ.
    #[error("a version 2 answer must carry the customer's cnpj")]
    MissingCnpj,
    /// A version 1 answer with a CNPJ: version 1 does not sign it, so it must not be shown as
    /// if it did.
    #[error("a version 1 answer carries no cnpj (version 1 does not sign it)")]
    UnsignedCnpj,
    /// The answer is about another customer, product or terminal than the one verifying it.
    #[error("the answer is for another {field}: expected {expected}, got {got}")]
    WrongSubject {
        /// `cnpj`, `product` or `hardware_id`.
        field: &'static str,
        /// What the verifier expected.
        expected: String,
        /// What the answer names.
        got: String,
    },
}

/// Whom an answer must be about: the customer, product and terminal that checked in. Every
/// verification function a terminal or a relay's terminal uses takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The customer the terminal belongs to.
    pub cnpj: Cnpj,
    /// The product that checked in.
    pub product: Product,
    /// The terminal's hardware id.
    pub hardware_id: HardwareId,
}

/// What the terminal is told to do, as a stable code.
///
/// JSON and the signed message use [`OutcomeCode::as_str`] (`"VALID"`); codes are never
/// renamed, only added.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeCode {
    /// Licensed: sell.
    Valid,
    /// Licensed, 3 days or fewer left: sell and show the warning.
    Expiring,
    /// The license is past its expiry: sales blocked.
    Expired,
    /// The license is blocked: sales blocked.
    Blocked,
    /// The license is deactivated: sales blocked.
    Deactivated,
    /// The customer is inactive (`Usuário inválido.`).
    CustomerInactive,
    /// The customer is blocked or blacklisted.
    CustomerBlocked,
    /// No license of the product for this terminal and none free to bind.
    NoLicense,
    /// Type 01 contingency (the server cannot reach the platform): sell until the
    /// contingency's expiry.
    ContingencyUpstream,
    /// Type 02 contingency (released by a counter-key): sell until the key's last day.
    ContingencyManual,
    /// Contingency past its grace period: sales blocked.
    GraceExpired,
}

impl OutcomeCode {
    /// Every code.
    pub const ALL: [OutcomeCode; 11] = [
        OutcomeCode::Valid,
        OutcomeCode::Expiring,
        OutcomeCode::Expired,
        OutcomeCode::Blocked,
        OutcomeCode::Deactivated,
        OutcomeCode::CustomerInactive,
        OutcomeCode::CustomerBlocked,
        OutcomeCode::NoLicense,
        OutcomeCode::ContingencyUpstream,
        OutcomeCode::ContingencyManual,
        OutcomeCode::GraceExpired,
    ];

    /// The stable code: `"VALID"`, `"EXPIRING"`, ..., `"GRACE_EXPIRED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeCode::Valid => "VALID",
            OutcomeCode::Expiring => "EXPIRING",
            OutcomeCode::Expired => "EXPIRED",
            OutcomeCode::Blocked => "BLOCKED",
            OutcomeCode::Deactivated => "DEACTIVATED",
            OutcomeCode::CustomerInactive => "CUSTOMER_INACTIVE",
            OutcomeCode::CustomerBlocked => "CUSTOMER_BLOCKED",
            OutcomeCode::NoLicense => "NO_LICENSE",
            OutcomeCode::ContingencyUpstream => "CONTINGENCY_UPSTREAM",
            OutcomeCode::ContingencyManual => "CONTINGENCY_MANUAL",
            OutcomeCode::GraceExpired => "GRACE_EXPIRED",
        }
    }

    /// Whether the terminal may sell: valid, expiring, or in either contingency.
    pub fn sells(self) -> bool {
        matches!(
            self,
            OutcomeCode::Valid
                | OutcomeCode::Expiring
                | OutcomeCode::ContingencyUpstream
                | OutcomeCode::ContingencyManual
        )
    }
}

impl fmt::Display for OutcomeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to one check-in, before signing.
///
/// Fields are public so the server can build it directly; [`CheckInAnswer::validate`] checks
/// the rules a decoder enforces (nonce form, message limits), and [`SignedAnswer::verify`]
/// applies them too.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInAnswer {
    /// The answer format: [`ANSWER_VERSION`] (2) for answers signed today; answers of older
    /// servers carry no `version` and are version 1.
    #[serde(default = "version_1")]
    pub version: u8,
    /// The customer the answer is for; present in version 2, absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnpj: Option<Cnpj>,
    /// The license that answered, if any.
    pub license_id: Option<LicenseId>,
    /// The terminal's hardware id.
    pub hardware_id: HardwareId,
    /// The key the terminal presented.
    pub hardware_key: HardwareKey,
    /// The product that checked in.
    pub product: Product,
    /// What the terminal is told to do.
    pub outcome: OutcomeCode,
    /// The date shown to the terminal: the license's expiry, or the contingency's own expiry
    /// when in contingency.
    #[serde(default, with = "crate::values::day::option")]
    pub expires_on: Option<NaiveDate>,
    /// Days left until `expires_on`, when the terminal should show them.
    pub days_left: Option<i64>,
    /// The license's resources ("Recursos"); empty when refused.
    pub resources: Resources,
    /// The exact pt-BR texts to show (see [`crate::texts`]), in display order; at most
    /// [`MAX_MESSAGES`] of at most [`MAX_MESSAGE_CHARS`] characters.
    #[serde(deserialize_with = "deserialize_messages")]
    pub messages: Vec<String>,
    /// When the server answered; signed at microsecond precision ([`sign`] truncates).
    #[serde(with = "crate::values::micros")]
    pub issued_at: DateTime<Utc>,
    /// The nonce the terminal sent, echoed (see [`parse_nonce`]).
    #[serde(default, deserialize_with = "deserialize_nonce")]
    pub nonce: Option<String>,
}

/// Checks a terminal's nonce: 1 to [`MAX_NONCE_CHARS`] characters of `A-Z a-z 0-9 _ -`, taken
/// exactly as sent (no trimming, since it is echoed and compared byte for byte).
pub fn parse_nonce(input: &str) -> Result<String, AnswerError> {
    let ok = !input.is_empty()
        && input.len() <= MAX_NONCE_CHARS
        && input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(input.to_owned())
    } else {
        Err(AnswerError::InvalidNonce)
    }
}

fn check_messages(messages: &[String]) -> Result<(), AnswerError> {
    if messages.len() > MAX_MESSAGES {
        return Err(AnswerError::TooManyMessages {
            count: messages.len(),
        });
    }
    match messages
        .iter()
        .position(|m| m.chars().count() > MAX_MESSAGE_CHARS)
    {
        Some(index) => Err(AnswerError::MessageTooLong { index }),
        None => Ok(()),
    }
}

fn deserialize_nonce<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|n| parse_nonce(&n))
        .transpose()
        .map_err(de::Error::custom)
}

fn deserialize_messages<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let messages = Vec::<String>::deserialize(d)?;
    check_messages(&messages).map_err(de::Error::custom)?;
    Ok(messages)
}

/// Appends a length as `u32`. Lengths here are bounded far below `u32::MAX` by the checks in
/// [`CheckInAnswer::validate`]; an unchecked, absurdly long field saturates rather than panics
/// and is then refused by `validate`.
fn put_len(buf: &mut Vec<u8>, len: usize) {
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_len(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

fn put_date(buf: &mut Vec<u8>, d: NaiveDate) {
    buf.extend_from_slice(&d.num_days_from_ce().to_be_bytes());
}

impl CheckInAnswer {
    /// Checks what decoding checks: the version and its CNPJ, the nonce's form and the
    /// message limits.
    pub fn validate(&self) -> Result<(), AnswerError> {
        match (self.version, self.cnpj) {
            (ANSWER_VERSION_1, None) | (ANSWER_VERSION, Some(_)) => {}
            (ANSWER_VERSION_1, Some(_)) => return Err(AnswerError::UnsignedCnpj),
            (ANSWER_VERSION, None) => return Err(AnswerError::MissingCnpj),
            (v, _) => return Err(AnswerError::UnknownVersion(v)),
        }
        if let Some(nonce) = &self.nonce {
            parse_nonce(nonce)?;
        }
        check_messages(&self.messages)
    }

    /// Refuses an answer about another customer, product or terminal than `expected`. A
    /// version 1 answer names no CNPJ and is compared on product and hardware id only.
    pub fn check_subject(&self, expected: &Subject) -> Result<(), AnswerError> {
        let wrong = |field, expected: &dyn fmt::Display, got: &dyn fmt::Display| {
            Err(AnswerError::WrongSubject {
                field,
                expected: expected.to_string(),
                got: got.to_string(),
            })
        };
        if let Some(cnpj) = &self.cnpj {
            if *cnpj != expected.cnpj {
                return wrong("cnpj", &expected.cnpj, cnpj);
            }
        }
        if self.product != expected.product {
            return wrong("product", &expected.product, &self.product);
        }
        if self.hardware_id != expected.hardware_id {
            return wrong("hardware_id", &expected.hardware_id, &self.hardware_id);
        }
        Ok(())
    }

    /// The canonical binary form the signature covers, independent of serde. The layout is
    /// in the module docs.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let text_len: usize = self.messages.iter().map(|m| 4 + m.len()).sum();
        let mut buf = Vec::with_capacity(180 + text_len + 80 * self.resources.len());
        if self.version == ANSWER_VERSION_1 {
            buf.extend_from_slice(TAG_V1);
        } else {
            // Version 2 (other versions are refused by `validate` before any check).
            buf.extend_from_slice(TAG_V2);
            put_str(&mut buf, self.cnpj.as_ref().map_or("", |c| c.as_str()));
        }
        match self.license_id {
            None => buf.push(0),
            Some(id) => {
                buf.push(1);
                buf.extend_from_slice(&id.get().to_be_bytes());
            }
        }
        buf.extend_from_slice(self.hardware_id.as_bytes());
        buf.extend_from_slice(self.hardware_key.as_bytes());
        put_str(&mut buf, self.product.code());
        put_str(&mut buf, self.outcome.as_str());
        match self.expires_on {
            None => buf.push(0),
            Some(d) => {
                buf.push(1);
                put_date(&mut buf, d);
            }
        }
        match self.days_left {
            None => buf.push(0),
            Some(n) => {
                buf.push(1);
                buf.extend_from_slice(&n.to_be_bytes());
            }
        }
        put_len(&mut buf, self.resources.len());
        for (key, value) in self.resources.iter() {
            // Resource keys are at most 64 ASCII bytes, so the length fits a byte.
            let key = key.as_str().as_bytes();
            buf.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
            buf.extend_from_slice(key);
            match value {
                ResourceValue::Bool(b) => {
                    buf.push(0);
                    buf.push(u8::from(*b));
                }
                ResourceValue::Int(i) => {
                    buf.push(1);
                    buf.extend_from_slice(&i.to_be_bytes());
                }
                ResourceValue::Text(t) => {
                    buf.push(2);
                    put_str(&mut buf, t);
                }
            }
        }
        put_len(&mut buf, self.messages.len());
        for message in &self.messages {
            put_str(&mut buf, message);
        }
        buf.extend_from_slice(&self.issued_at.timestamp_micros().to_be_bytes());
        match &self.nonce {
            None => buf.push(0),
            Some(n) => {
                buf.push(1);
                put_str(&mut buf, n);
            }
        }
        buf
    }
}

/// The exact bytes a signature covers: `key_id` as `str` (u32 length + UTF-8), then
/// [`CheckInAnswer::canonical_bytes`].
pub fn signed_message(answer: &CheckInAnswer, key_id: &str) -> Vec<u8> {
    let canonical = answer.canonical_bytes();
    let mut msg = Vec::with_capacity(4 + key_id.len() + canonical.len());
    put_str(&mut msg, key_id);
    msg.extend_from_slice(&canonical);
    msg
}

/// A check-in answer with the server's signature, as sent to the terminal.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnswer {
    /// The answer.
    pub answer: CheckInAnswer,
    /// Which server key signed it (see [`key_id_for`]); covered by the signature.
    pub key_id: String,
    /// Ed25519 signature over [`signed_message`], 128 lower-case hex digits.
    pub signature: String,
}

/// Signs an answer with the server's key, naming the key `key_id` (normally
/// [`key_id_for`] of its public half).
///
/// `issued_at` is truncated to microseconds first, so the returned answer is exactly what was
/// signed and survives a JSON round trip unchanged. The answer should pass
/// [`CheckInAnswer::validate`] and `key_id` be 1 to [`MAX_KEY_ID_BYTES`] bytes; otherwise the
/// terminal refuses it.
pub fn sign(mut answer: CheckInAnswer, key: &SigningKey, key_id: &str) -> SignedAnswer {
    answer.issued_at = truncate_to_micros(answer.issued_at);
    let signature = key.sign(&signed_message(&answer, key_id));
    SignedAnswer {
        answer,
        key_id: key_id.to_owned(),
        signature: hex::encode(signature.to_bytes()),
    }
}

/// The conventional id of a server key: the first 16 lower-case hex digits of SHA-256 of the
/// 32-byte public key.
pub fn key_id_for(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

impl SignedAnswer {
    /// Checks the answer's form and its signature under `key` (the public key the terminal
    /// trusts for `key_id`), and nothing else: not whom the answer is about, not the nonce.
    /// Terminals use [`SignedAnswer::verify_with_nonce`] or [`SignedAnswer::verify_for`],
    /// which take the expected [`Subject`].
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<(), AnswerError> {
        self.answer.validate()?;
        if self.key_id.is_empty() || self.key_id.len() > MAX_KEY_ID_BYTES {
            return Err(AnswerError::InvalidKeyId);
        }
        let signature =
            decode_signature(&self.signature).ok_or(AnswerError::BadSignatureEncoding)?;
        key.verify_strict(&signed_message(&self.answer, &self.key_id), &signature)
            .map_err(|_| AnswerError::BadSignature)
    }

    /// What a terminal checks: the signature under `key`, that the answer is about
    /// `expected` (CNPJ, product and hardware id; version 1 answers sign no CNPJ, so only
    /// product and hardware id are compared), and that it echoes `expected_nonce`, the nonce
    /// this terminal sent with its check-in (`None`: it sent none, and the answer must carry
    /// none), so an answer recorded earlier cannot be replayed.
    pub fn verify_for(
        &self,
        key: &VerifyingKey,
        expected: &Subject,
        expected_nonce: Option<&str>,
    ) -> Result<(), AnswerError> {
        self.verify_signature(key)?;
        self.answer.check_subject(expected)?;
        if self.answer.nonce.as_deref() != expected_nonce {
            return Err(AnswerError::NonceMismatch);
        }
        Ok(())
    }

    /// [`SignedAnswer::verify_for`] with the nonce the terminal sent.
    pub fn verify_with_nonce(
        &self,
        key: &VerifyingKey,
        expected: &Subject,
        expected_nonce: &str,
    ) -> Result<(), AnswerError> {
        self.verify_for(key, expected, Some(expected_nonce))
    }
}

/// Domain tag of a signed log head, so a head signature can never pass for an answer's.
pub const HEAD_SIGNATURE_TAG: &[u8] = b"license-ledger/head/v1";

/// The exact bytes a head signature covers: [`HEAD_SIGNATURE_TAG`], the head position as
/// 8 bytes big-endian, then the head hash's 32 bytes.
pub fn head_message(position: u64, hash: &crate::envelope::Hash) -> Vec<u8> {
    let mut msg = Vec::with_capacity(HEAD_SIGNATURE_TAG.len() + 8 + 32);
    msg.extend_from_slice(HEAD_SIGNATURE_TAG);
    msg.extend_from_slice(&position.to_be_bytes());
    msg.extend_from_slice(&hash.0);
    msg
}

/// Signs a log head (see [`head_message`]); 128 lower-case hex digits.
pub fn sign_head(key: &SigningKey, position: u64, hash: &crate::envelope::Hash) -> String {
    hex::encode(key.sign(&head_message(position, hash)).to_bytes())
}

/// Checks a head signature made by [`sign_head`] under `key`.
pub fn verify_head(
    key: &VerifyingKey,
    position: u64,
    hash: &crate::envelope::Hash,
    signature_hex: &str,
) -> Result<(), AnswerError> {
    let signature = decode_signature(signature_hex).ok_or(AnswerError::BadSignatureEncoding)?;
    key.verify_strict(&head_message(position, hash), &signature)
        .map_err(|_| AnswerError::BadSignature)
}

/// Domain tag of a relay certificate, so it can never pass for an answer or a head.
pub const RELAY_CERTIFICATE_TAG: &[u8] = b"license-ledger/relay-certificate/v1";

/// The central server's statement that a relay's key may answer check-ins for one customer
/// until a date: terminals that trust the central key accept answers signed by the relay
/// key named here, for that CNPJ only, while the certificate is valid.
///
/// Signed message: [`RELAY_CERTIFICATE_TAG`], then `cnpj` as `str`, the relay's 32-byte
/// public key, `valid_until` as `i64` microseconds since 1970-01-01T00:00:00Z, and the
/// central `issuer_key_id` as `str`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCertificate {
    /// The customer the relay serves.
    pub cnpj: crate::values::Cnpj,
    /// The relay's Ed25519 public key, 64 hex digits.
    pub relay_public_key: String,
    /// The relay key's id ([`key_id_for`] of it): the `key_id` of the answers it signs.
    pub relay_key_id: String,
    /// Until when answers signed by the relay key are accepted.
    pub valid_until: DateTime<Utc>,
    /// The central key that signed this certificate.
    pub issuer_key_id: String,
    /// Ed25519 signature by the central key, 128 hex digits.
    pub signature: String,
}

fn relay_certificate_message(
    cnpj: &crate::values::Cnpj,
    relay_key: &VerifyingKey,
    valid_until: DateTime<Utc>,
    issuer_key_id: &str,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(RELAY_CERTIFICATE_TAG.len() + 80);
    msg.extend_from_slice(RELAY_CERTIFICATE_TAG);
    put_str(&mut msg, cnpj.as_str());
    msg.extend_from_slice(relay_key.as_bytes());
    msg.extend_from_slice(&valid_until.timestamp_micros().to_be_bytes());
    put_str(&mut msg, issuer_key_id);
    msg
}

/// Why a relay certificate or an answer under it was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The certificate's signature is not the issuer's, or a field was altered.
    #[error("the relay certificate is not signed by this central key")]
    BadSignature,
    /// A key or signature is not valid hex of the right length.
    #[error("the relay certificate's {0} is not valid")]
    Malformed(&'static str),
    /// The certificate is for another customer than the terminal's.
    #[error("the relay certificate is for customer {certified}, not {expected}")]
    OtherCustomer {
        /// The certificate's CNPJ.
        certified: crate::values::Cnpj,
        /// The terminal's.
        expected: crate::values::Cnpj,
    },
    /// The certificate had expired when the answer was issued.
    #[error("the relay certificate expired at {0}")]
    Expired(DateTime<Utc>),
    /// The answer was signed by another key than the certified one.
    #[error("the answer's key id {answer} is not the certified relay key {certified}")]
    WrongKey {
        /// The answer's key id.
        answer: String,
        /// The certificate's relay key id.
        certified: String,
    },
    /// The answer's own signature failed.
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

/// Certifies `relay_key` for `cnpj` until `valid_until` with the central `key`.
pub fn certify_relay(
    key: &SigningKey,
    cnpj: crate::values::Cnpj,
    relay_key: &VerifyingKey,
    valid_until: DateTime<Utc>,
) -> RelayCertificate {
    let valid_until = truncate_to_micros(valid_until);
    let issuer_key_id = key_id_for(&key.verifying_key());
    let signature = key.sign(&relay_certificate_message(
        &cnpj,
        relay_key,
        valid_until,
        &issuer_key_id,
    ));
    RelayCertificate {
        cnpj,
        relay_public_key: hex::encode(relay_key.as_bytes()),
        relay_key_id: key_id_for(relay_key),
        valid_until,
        issuer_key_id,
        signature: hex::encode(signature.to_bytes()),
    }
}

/// A signature as the format writes it: exactly 128 lower-case hex digits (one encoding per
/// signature, so an answer's bytes cannot be varied without the check noticing).
fn decode_signature(hex_text: &str) -> Option<Signature> {
    let mut bytes = [0u8; 64];
    let canonical = hex_text.len() == SIGNATURE_HEX_LEN
        && hex_text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (canonical && hex::decode_to_slice(hex_text, &mut bytes).is_ok())
        .then(|| Signature::from_bytes(&bytes))
}

impl RelayCertificate {
    /// The certified relay key, once the certificate's signature checks under `central`.
    pub fn verify(&self, central: &VerifyingKey) -> Result<VerifyingKey, CertificateError> {
        let mut key_bytes = [0u8; 32];
        hex::decode_to_slice(&self.relay_public_key, &mut key_bytes)
            .map_err(|_| CertificateError::Malformed("relay_public_key"))?;
        let relay_key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| CertificateError::Malformed("relay_public_key"))?;
        if key_id_for(&relay_key) != self.relay_key_id {
            return Err(CertificateError::Malformed("relay_key_id"));
        }
        let signature =
            decode_signature(&self.signature).ok_or(CertificateError::Malformed("signature"))?;
        central
            .verify_strict(
                &relay_certificate_message(
                    &self.cnpj,
                    &relay_key,
                    self.valid_until,
                    &self.issuer_key_id,
                ),
                &signature,
            )
            .map_err(|_| CertificateError::BadSignature)?;
        Ok(relay_key)
    }

    /// What a terminal behind a relay checks: the certificate under `central`, that it
    /// certifies the relay for the terminal's own customer (`expected.cnpj`), that the answer
    /// is signed by the certified key while the certificate was valid, and everything
    /// [`SignedAnswer::verify_for`] checks (the answer's signature, that it is about
    /// `expected` — for version 2 its CNPJ too — and the nonce). Returns the relay's key.
    pub fn verify_answer(
        &self,
        central: &VerifyingKey,
        answer: &SignedAnswer,
        expected: &Subject,
        expected_nonce: Option<&str>,
    ) -> Result<VerifyingKey, CertificateError> {
        let relay_key = self.verify(central)?;
        if self.cnpj != expected.cnpj {
            return Err(CertificateError::OtherCustomer {
                certified: self.cnpj,
                expected: expected.cnpj,
            });
        }
        if answer.key_id != self.relay_key_id {
            return Err(CertificateError::WrongKey {
                answer: answer.key_id.clone(),
                certified: self.relay_key_id.clone(),
            });
        }
        if answer.answer.issued_at > self.valid_until {
            return Err(CertificateError::Expired(self.valid_until));
        }
        answer.verify_for(&relay_key, expected, expected_nonce)?;
        Ok(relay_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::texts;
    use crate::values::ResourceKey;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn server_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn cnpj() -> Cnpj {
        Cnpj::parse("11222333000181").unwrap()
    }

    fn subject() -> Subject {
        Subject {
            cnpj: cnpj(),
            product: Product::EasyCash,
            hardware_id: HardwareId::parse("50026B77825EECA5").unwrap(),
        }
    }

    /// The same answer as [`answer`], in version 1 (no CNPJ), as older servers signed it.
    fn answer_v1() -> CheckInAnswer {
        CheckInAnswer {
            version: ANSWER_VERSION_1,
            cnpj: None,
            ..answer()
        }
    }

    fn answer() -> CheckInAnswer {
        let expires = day(2023, 3, 30);
        CheckInAnswer {
            version: ANSWER_VERSION,
            cnpj: Some(cnpj()),
            license_id: Some(LicenseId::parse("002438").unwrap()),
            hardware_id: HardwareId::parse("50026B77825EECA5").unwrap(),
            hardware_key: HardwareKey::parse("88A7B56C2B3F326F91362A182483F63E").unwrap(),
            product: Product::EasyCash,
            outcome: OutcomeCode::Expiring,
            expires_on: Some(expires),
            days_left: Some(1),
            resources: Resources::new([
                (
                    ResourceKey::parse("habilita_dav").unwrap(),
                    ResourceValue::Bool(true),
                ),
                (
                    ResourceKey::parse("habilita_preventa").unwrap(),
                    ResourceValue::Bool(false),
                ),
                (ResourceKey::parse("caixas").unwrap(), ResourceValue::Int(3)),
                (
                    ResourceKey::parse("plano").unwrap(),
                    ResourceValue::Text("básico".into()),
                ),
            ])
            .unwrap(),
            messages: vec![
                texts::expires_on(expires),
                texts::days_left_warning(1),
                texts::license_date(expires),
            ],
            issued_at: "2023-03-27T17:31:32.123456Z".parse().unwrap(),
            nonce: Some("n0nce-ABC_123".into()),
        }
    }

    fn signed() -> SignedAnswer {
        let key = server_key();
        sign(answer(), &key, &key_id_for(&key.verifying_key()))
    }

    #[test]
    fn a_signed_answer_verifies_under_the_servers_key() {
        let s = signed();
        let public = server_key().verifying_key();
        assert_eq!(s.signature.len(), SIGNATURE_HEX_LEN);
        assert_eq!(s.verify_signature(&public), Ok(()));
        assert_eq!(
            s.verify_with_nonce(&public, &subject(), "n0nce-ABC_123"),
            Ok(())
        );
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let public = server_key().verifying_key();
        type Tamper = fn(&mut SignedAnswer);
        let tampers: [(&str, Tamper); 22] = [
            ("cnpj", |s| {
                s.answer.cnpj = Some(Cnpj::parse("11444777000161").unwrap())
            }),
            ("version 1 without the cnpj", |s| {
                s.answer.version = ANSWER_VERSION_1;
                s.answer.cnpj = None;
            }),
            ("version 1 keeping the cnpj", |s| {
                s.answer.version = ANSWER_VERSION_1
            }),
            ("license id", |s| {
                s.answer.license_id = Some(LicenseId::new(2439).unwrap())
            }),
            ("license id removed", |s| s.answer.license_id = None),
            ("hardware id", |s| {
                s.answer.hardware_id = HardwareId::parse("50026B77825EECA6").unwrap()
            }),
            ("hardware key", |s| {
                s.answer.hardware_key =
                    HardwareKey::parse("88A7B56C2B3F326F91362A182483F63F").unwrap()
            }),
            ("product", |s| s.answer.product = Product::Intellicash),
            ("outcome", |s| s.answer.outcome = OutcomeCode::Valid),
            ("expires on", |s| {
                s.answer.expires_on = Some(NaiveDate::from_ymd_opt(2023, 3, 31).unwrap())
            }),
            ("expires on removed", |s| s.answer.expires_on = None),
            ("days left", |s| s.answer.days_left = Some(2)),
            ("resource value", |s| {
                s.answer.resources = Resources::new(s.answer.resources.iter().map(|(k, v)| {
                    let v = if k.as_str() == "habilita_preventa" {
                        ResourceValue::Bool(true)
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                }))
                .unwrap()
            }),
            ("resource removed", |s| {
                s.answer.resources = Resources::new(
                    s.answer
                        .resources
                        .iter()
                        .filter(|(k, _)| k.as_str() != "caixas")
                        .map(|(k, v)| (k.clone(), v.clone())),
                )
                .unwrap()
            }),
            ("message text", |s| s.answer.messages[0].push('.')),
            ("message order", |s| s.answer.messages.swap(1, 2)),
            ("message removed", |s| {
                s.answer.messages.pop();
            }),
            ("nonce", |s| s.answer.nonce = Some("n0nce-ABC_124".into())),
            ("nonce removed", |s| s.answer.nonce = None),
            ("issued at", |s| {
                s.answer.issued_at += chrono::Duration::microseconds(1)
            }),
            ("key id", |s| s.key_id = "0000000000000000".into()),
            ("signature", |s| {
                let flipped = if s.signature.starts_with('0') {
                    "1"
                } else {
                    "0"
                };
                s.signature.replace_range(0..1, flipped)
            }),
        ];
        let original = signed();
        for (what, tamper) in tampers {
            let mut s = original.clone();
            tamper(&mut s);
            assert_ne!(s, original, "{what}: the tamper changed nothing");
            assert!(s.verify_signature(&public).is_err(), "{what}");
        }
    }

    #[test]
    fn another_key_cannot_sign_for_the_server() {
        let impostor = SigningKey::from_bytes(&[8u8; 32]);
        let server_id = key_id_for(&server_key().verifying_key());
        let forged = sign(answer(), &impostor, &server_id);
        assert_eq!(
            forged.verify_signature(&server_key().verifying_key()),
            Err(AnswerError::BadSignature)
        );
        assert_eq!(
            signed().verify_signature(&impostor.verifying_key()),
            Err(AnswerError::BadSignature)
        );
    }

    #[test]
    fn an_answer_for_another_nonce_is_refused() {
        let public = server_key().verifying_key();
        let s = signed();
        assert_eq!(
            s.verify_with_nonce(&public, &subject(), "another-nonce"),
            Err(AnswerError::NonceMismatch)
        );
        let mut without = answer();
        without.nonce = None;
        let s = sign(without, &server_key(), "k1");
        assert_eq!(s.verify_signature(&public), Ok(()));
        assert_eq!(
            s.verify_with_nonce(&public, &subject(), "n0nce-ABC_123"),
            Err(AnswerError::NonceMismatch)
        );
    }

    #[test]
    fn a_badly_encoded_signature_is_reported_as_such() {
        let public = server_key().verifying_key();
        let mut s = signed();
        s.signature.pop();
        assert_eq!(
            s.verify_signature(&public),
            Err(AnswerError::BadSignatureEncoding)
        );
        let mut s = signed();
        s.signature.replace_range(0..1, "g");
        assert_eq!(
            s.verify_signature(&public),
            Err(AnswerError::BadSignatureEncoding)
        );
    }

    #[test]
    fn a_json_round_trip_still_verifies() {
        let s = signed();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""license_id":"002438""#), "{json}");
        assert!(json.contains(r#""outcome":"EXPIRING""#), "{json}");
        assert!(json.contains(r#""expires_on":"2023-03-30""#), "{json}");
        assert!(
            json.contains(r#""issued_at":"2023-03-27T17:31:32.123456Z""#),
            "{json}"
        );
        assert!(json.contains(r#""habilita_dav":true"#), "{json}");
        let back: SignedAnswer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            back.verify_with_nonce(&server_key().verifying_key(), &subject(), "n0nce-ABC_123"),
            Ok(())
        );
    }

    #[test]
    fn absent_optional_fields_decode_as_none() {
        let mut a = answer();
        a.license_id = None;
        a.expires_on = None;
        a.days_left = None;
        a.nonce = None;
        let mut json: serde_json::Value = serde_json::to_value(&a).unwrap();
        let fields = json.as_object_mut().unwrap();
        for name in ["license_id", "expires_on", "days_left", "nonce"] {
            assert!(fields.remove(name).is_some(), "{name}");
        }
        assert_eq!(serde_json::from_value::<CheckInAnswer>(json).unwrap(), a);
    }

    #[test]
    fn signing_drops_sub_microsecond_precision() {
        let mut a = answer();
        a.issued_at += chrono::Duration::nanoseconds(789);
        let s = sign(a, &server_key(), "k1");
        assert_eq!(s.answer.issued_at, answer().issued_at);
        let back: SignedAnswer = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn nonces_are_short_url_safe_tokens() {
        assert_eq!(parse_nonce("abc-DEF_123").unwrap(), "abc-DEF_123");
        assert!(parse_nonce(&"a".repeat(MAX_NONCE_CHARS)).is_ok());
        for bad in ["", " abc", "a b", "abç", "a/b", "a=b"] {
            assert_eq!(parse_nonce(bad), Err(AnswerError::InvalidNonce), "{bad:?}");
        }
        assert!(parse_nonce(&"a".repeat(MAX_NONCE_CHARS + 1)).is_err());
    }

    #[test]
    fn decoding_refuses_a_bad_nonce_and_too_many_messages() {
        let json = serde_json::to_string(&signed()).unwrap();
        let bad_nonce = json.replace("n0nce-ABC_123", "n0nce ABC");
        let err = serde_json::from_str::<SignedAnswer>(&bad_nonce).unwrap_err();
        assert!(err.to_string().contains("nonce"), "{err}");

        let mut many = answer();
        many.messages = vec!["x".into(); MAX_MESSAGES + 1];
        let json = serde_json::to_string(&many).unwrap();
        assert!(serde_json::from_str::<CheckInAnswer>(&json).is_err());
        let s = sign(many, &server_key(), "k1");
        assert_eq!(
            s.verify_signature(&server_key().verifying_key()),
            Err(AnswerError::TooManyMessages {
                count: MAX_MESSAGES + 1
            })
        );

        let mut long = answer();
        long.messages[1] = "x".repeat(MAX_MESSAGE_CHARS + 1);
        assert_eq!(
            long.validate(),
            Err(AnswerError::MessageTooLong { index: 1 })
        );
    }

    #[test]
    fn a_key_id_must_be_short_and_present() {
        let public = server_key().verifying_key();
        for bad in [String::new(), "k".repeat(MAX_KEY_ID_BYTES + 1)] {
            let s = sign(answer(), &server_key(), &bad);
            assert_eq!(s.verify_signature(&public), Err(AnswerError::InvalidKeyId));
        }
    }

    #[test]
    fn length_prefixes_keep_neighbouring_fields_apart() {
        let mut a = answer();
        a.messages = vec!["ab".into(), "c".into()];
        let mut b = answer();
        b.messages = vec!["a".into(), "bc".into()];
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert_ne!(signed_message(&a, "k1"), signed_message(&a, "k"));
    }

    #[test]
    fn outcome_codes_are_stable_strings() {
        for code in OutcomeCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<OutcomeCode>(&json).unwrap(), code);
            assert_eq!(code.to_string(), code.as_str());
        }
        let selling: Vec<_> = OutcomeCode::ALL.into_iter().filter(|c| c.sells()).collect();
        assert_eq!(
            selling,
            [
                OutcomeCode::Valid,
                OutcomeCode::Expiring,
                OutcomeCode::ContingencyUpstream,
                OutcomeCode::ContingencyManual
            ]
        );
    }

    /// Test vectors for terminal vendors, computed independently (Python, from the layout in
    /// the module docs, and the `cryptography` package for Ed25519). If one fails, the format
    /// changed: terminals in the field would refuse every answer.
    #[test]
    fn known_answer_canonical_bytes_key_id_and_signature() {
        let a = answer_v1();
        assert_eq!(
            hex::encode(Sha256::digest(a.canonical_bytes())),
            "9a79e3252104569bd173dd020dba8f7720eb5cb05415063c748a44ce556f9210"
        );
        let key = server_key();
        assert_eq!(key_id_for(&key.verifying_key()), "fe812c12f3ab4ce6");
        assert_eq!(sign(answer_v1(), &key, "fe812c12f3ab4ce6").signature, "291dbb274bc3a212f8d93f7079064ea04fce73715e3a8db93ad24922cb647d594a1aac893a597d1cb70b77672fbcf80cbc2a01d1a3f171bf25c3da6676384402");
        // Version 2, the same answer for customer 11222333000181 (what servers sign today).
        assert_eq!(
            hex::encode(Sha256::digest(answer().canonical_bytes())),
            "74a142e4e1a97821cebfbfad40b5a472a4000c729ed0d901614fc386a487f707"
        );
        assert_eq!(signed().signature, "dd6da11ae601fc40b9ba92c0f00bfa58e1286c66e414dfe6be6b53603ec229426c92dafe6ad62731b136187720473abb47cc447f3a68ae8cd4c0b23776d4b203");
    }

    #[test]
    fn a_relay_answer_verifies_under_a_certificate_from_the_central_key_and_nothing_else() {
        let central = server_key();
        let relay = SigningKey::from_bytes(&[9u8; 32]);
        let cnpj = crate::values::Cnpj::parse("11222333000181").unwrap();
        let until = chrono::TimeZone::with_ymd_and_hms(&Utc, 2023, 4, 30, 0, 0, 0).unwrap();
        let cert = certify_relay(&central, cnpj, &relay.verifying_key(), until);
        let relay_id = key_id_for(&relay.verifying_key());
        let signed = sign(answer(), &relay, &relay_id);

        assert_eq!(
            cert.verify_answer(
                &central.verifying_key(),
                &signed,
                &subject(),
                Some("n0nce-ABC_123")
            ),
            Ok(relay.verifying_key())
        );
        // Another central key, an altered certificate, another key's answer, an expired one.
        let other = SigningKey::from_bytes(&[3u8; 32]);
        assert_eq!(
            cert.verify_answer(
                &other.verifying_key(),
                &signed,
                &subject(),
                Some("n0nce-ABC_123")
            ),
            Err(CertificateError::BadSignature)
        );
        let mut longer = cert.clone();
        longer.valid_until = until + chrono::Duration::days(1);
        assert_eq!(
            longer.verify_answer(
                &central.verifying_key(),
                &signed,
                &subject(),
                Some("n0nce-ABC_123")
            ),
            Err(CertificateError::BadSignature)
        );
        let mut elsewhere = cert.clone();
        elsewhere.cnpj = crate::values::Cnpj::parse("11444777000161").unwrap();
        assert!(elsewhere.verify(&central.verifying_key()).is_err());
        let by_other = sign(answer(), &other, &key_id_for(&other.verifying_key()));
        assert!(matches!(
            cert.verify_answer(
                &central.verifying_key(),
                &by_other,
                &subject(),
                Some("n0nce-ABC_123")
            ),
            Err(CertificateError::WrongKey { .. })
        ));
        let mut late = answer();
        late.issued_at = until + chrono::Duration::seconds(1);
        let late = sign(late, &relay, &relay_id);
        assert_eq!(
            cert.verify_answer(
                &central.verifying_key(),
                &late,
                &subject(),
                Some("n0nce-ABC_123")
            ),
            Err(CertificateError::Expired(until))
        );
        let mut forged = signed.clone();
        forged.answer.days_left = Some(999);
        assert!(matches!(
            cert.verify_answer(
                &central.verifying_key(),
                &forged,
                &subject(),
                Some("n0nce-ABC_123")
            ),
            Err(CertificateError::Answer(AnswerError::BadSignature))
        ));
    }

    fn other_subject() -> Subject {
        Subject {
            cnpj: Cnpj::parse("11444777000161").unwrap(),
            product: Product::Intellicash,
            hardware_id: HardwareId::parse("0000000000000001").unwrap(),
        }
    }

    #[test]
    fn finding_2_a_version_2_answer_verified_for_another_cnpj_product_or_hardware_id_is_refused() {
        let public = server_key().verifying_key();
        let s = signed();
        assert_eq!(s.answer.version, 2);
        assert_eq!(
            s.verify_for(&public, &subject(), Some("n0nce-ABC_123")),
            Ok(())
        );
        let other = other_subject();
        let cases = [
            (
                "cnpj",
                Subject {
                    cnpj: other.cnpj,
                    ..subject()
                },
            ),
            (
                "product",
                Subject {
                    product: other.product,
                    ..subject()
                },
            ),
            (
                "hardware_id",
                Subject {
                    hardware_id: other.hardware_id,
                    ..subject()
                },
            ),
        ];
        for (field, expected) in cases {
            match s.verify_with_nonce(&public, &expected, "n0nce-ABC_123") {
                Err(AnswerError::WrongSubject { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        // A nonce the terminal did not send, or none when it sent one.
        assert_eq!(
            s.verify_for(&public, &subject(), None),
            Err(AnswerError::NonceMismatch)
        );
    }

    #[test]
    fn finding_2_a_relay_certificate_of_customer_a_cannot_vouch_for_customer_b_terminal() {
        let central = server_key();
        let relay_a = SigningKey::from_bytes(&[9u8; 32]);
        let until = chrono::TimeZone::with_ymd_and_hms(&Utc, 2023, 4, 30, 0, 0, 0).unwrap();
        let cert_a = certify_relay(&central, cnpj(), &relay_a.verifying_key(), until);
        let relay_id = key_id_for(&relay_a.verifying_key());
        // Customer B's terminal, and forged VALID answers for it signed by A's relay key.
        let b = Subject {
            cnpj: Cnpj::parse("11444777000161").unwrap(),
            ..subject()
        };
        let valid = |version, cnpj| CheckInAnswer {
            version,
            cnpj,
            outcome: OutcomeCode::Valid,
            expires_on: Some(day(2099, 12, 31)),
            days_left: None,
            ..answer()
        };
        let forgeries = [
            ("v2 naming B", valid(ANSWER_VERSION, Some(b.cnpj))),
            ("v2 naming A", valid(ANSWER_VERSION, Some(cnpj()))),
            ("v1 naming nobody", valid(ANSWER_VERSION_1, None)),
        ];
        for (what, forged) in forgeries {
            let forged = sign(forged, &relay_a, &relay_id);
            // Each is a well-signed answer: only the subject gives it away.
            assert_eq!(
                forged.verify_signature(&relay_a.verifying_key()),
                Ok(()),
                "{what}"
            );
            assert_eq!(
                cert_a.verify_answer(&central.verifying_key(), &forged, &b, Some("n0nce-ABC_123")),
                Err(CertificateError::OtherCustomer {
                    certified: cnpj(),
                    expected: b.cnpj
                }),
                "{what}"
            );
        }
        // A certificate for A vouches for A's terminal only, and an answer naming another
        // customer is refused even under A's own certificate.
        let for_a = sign(valid(ANSWER_VERSION, Some(cnpj())), &relay_a, &relay_id);
        assert!(cert_a
            .verify_answer(
                &central.verifying_key(),
                &for_a,
                &subject(),
                Some("n0nce-ABC_123")
            )
            .is_ok());
        let naming_b = sign(valid(ANSWER_VERSION, Some(b.cnpj)), &relay_a, &relay_id);
        assert!(matches!(
            cert_a.verify_answer(
                &central.verifying_key(),
                &naming_b,
                &subject(),
                Some("n0nce-ABC_123")
            ),
            Err(CertificateError::Answer(AnswerError::WrongSubject {
                field: "cnpj",
                ..
            }))
        ));
    }

    #[test]
    fn finding_2_an_old_version_1_answer_still_verifies_under_version_1_rules() {
        let public = server_key().verifying_key();
        let key = server_key();
        let v1 = sign(answer_v1(), &key, &key_id_for(&public));
        // As an older server sent it: no `version`, no `cnpj` in the JSON.
        let mut json = serde_json::to_value(&v1).unwrap();
        let fields = json["answer"].as_object_mut().unwrap();
        assert!(fields.remove("version").is_some());
        assert!(!fields.contains_key("cnpj"));
        let back: SignedAnswer = serde_json::from_value(json).unwrap();
        assert_eq!(back.answer.version, ANSWER_VERSION_1);
        assert_eq!(
            back.verify_with_nonce(&public, &subject(), "n0nce-ABC_123"),
            Ok(())
        );
        // Version 1 signs no CNPJ: any is accepted; product and hardware id are compared.
        let other = other_subject();
        assert_eq!(
            back.verify_with_nonce(
                &public,
                &Subject {
                    cnpj: other.cnpj,
                    ..subject()
                },
                "n0nce-ABC_123"
            ),
            Ok(())
        );
        for expected in [
            Subject {
                product: other.product,
                ..subject()
            },
            Subject {
                hardware_id: other.hardware_id,
                ..subject()
            },
        ] {
            assert!(matches!(
                back.verify_with_nonce(&public, &expected, "n0nce-ABC_123"),
                Err(AnswerError::WrongSubject { .. })
            ));
        }
        // A CNPJ added to a version 1 answer is not signed, so it is refused; a version 2
        // without one, or an unknown version, too.
        let mut with_cnpj = back.clone();
        with_cnpj.answer.cnpj = Some(cnpj());
        assert_eq!(
            with_cnpj.verify_signature(&public),
            Err(AnswerError::UnsignedCnpj)
        );
        let mut bare_v2 = signed();
        bare_v2.answer.cnpj = None;
        assert_eq!(
            bare_v2.verify_signature(&public),
            Err(AnswerError::MissingCnpj)
        );
        let mut v3 = signed();
        v3.answer.version = 3;
        assert_eq!(
            v3.verify_signature(&public),
            Err(AnswerError::UnknownVersion(3))
        );
        // The two versions never share a message.
        assert_ne!(answer().canonical_bytes(), answer_v1().canonical_bytes());
    }

    #[test]
    fn a_signature_in_upper_case_hex_is_refused() {
        let signed = sign(answer(), &server_key(), "k1");
        let mut upper = signed.clone();
        upper.signature = upper.signature.to_uppercase();
        assert!(upper.signature != signed.signature);
        assert_eq!(
            upper.verify_signature(&server_key().verifying_key()),
            Err(AnswerError::BadSignatureEncoding)
        );
        assert_eq!(
            signed.verify_signature(&server_key().verifying_key()),
            Ok(())
        );
    }
}
