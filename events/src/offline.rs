//! Offline activation ("Liberação off-line"): the counter-key support reads back to a terminal
//! that cannot reach its server, and the check a terminal runs on it without any network.
//!
//! The flow (manual, "Procedimentos de Emergência"): support unlinks the license; the terminal
//! shows a 16-hex [`Serial`]; support enters product and serial in "Ativar Offline" and reads
//! back a 16-hex [`CounterKey`] (`AF67 142D 1048 F615`); the terminal checks it and sells for
//! [`OFFLINE_VALID_DAYS`] day.
//!
//! # Algorithm (version 1)
//!
//! A terminal vendor can reimplement it from this description alone:
//!
//! ```text
//! mac = HMAC-SHA-256(key = per-product secret,
//!                    msg = "license-ledger/offline/v1"      (25 ASCII bytes, the version tag)
//!                       || serial                            (8 raw bytes, not hex)
//!                       || product code                      (ASCII, e.g. "easycash")
//!                       || 0x00                              (ends the product code)
//!                       || valid_until                       (i32 big-endian, days from CE:
//!                                                             0001-01-01 is 1))
//! counter_key = mac[0..8]                                    (shown as 16 upper-case hex)
//! ```
//!
//! The server issues a key valid until [`valid_until`]`(issued_on)`, the day after issue. The
//! terminal does not know that date, so [`verify_counter_key`] tries each candidate from
//! `today` to `today + OFFLINE_VALID_DAYS` and reports the one that matches: a key is accepted
//! on its issue day and on the next, and on no later day (an expired key simply matches no
//! candidate). The server, which knows the date, uses [`check_counter_key`] to tell an expired
//! key from a forged one.
//!
//! The secret is per product and must be long and random (32 bytes from a CSPRNG): HMAC
//! accepts any key, including an empty one, and a short secret makes counter-keys guessable.
//! Keeping it out of logs and configuration dumps is the caller's job.

use chrono::{Datelike, Days, NaiveDate};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::values::{CounterKey, Product, Serial};

/// Days a counter-key lets a terminal sell after the day it was issued ("liberado por 1 dia").
pub const OFFLINE_VALID_DAYS: i64 = 1;

/// Domain-separation tag, first in every MAC input; a new algorithm gets a new tag.
const TAG: &[u8] = b"license-ledger/offline/v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a counter-key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfflineError {
    /// The key was not issued for this serial, product and secret (mistyped, wrong serial,
    /// wrong product, or forged). A terminal also sees an expired key this way.
    #[error("the counter-key does not match this serial and product")]
    Invalid,
    /// The key is genuine but its last valid day has passed.
    #[error("the counter-key expired on {valid_until}")]
    Expired {
        /// Last day the key was valid.
        valid_until: NaiveDate,
    },
    /// The key is genuine but valid until a day a terminal would not yet accept (more than
    /// [`OFFLINE_VALID_DAYS`] ahead of `today`: a clock far behind, or a key issued ahead).
    #[error("the counter-key is valid until {valid_until}, too far ahead of today")]
    NotYetValid {
        /// Last day the key is valid.
        valid_until: NaiveDate,
    },
}

/// The MAC state for one (serial, product, valid-until), before finalisation.
fn mac(secret: &[u8], serial: &Serial, product: Product, valid_until: NaiveDate) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .expect("HMAC-SHA-256 accepts keys of any length");
    mac.update(TAG);
    mac.update(serial.as_bytes());
    mac.update(product.code().as_bytes());
    mac.update(&[0]);
    mac.update(&valid_until.num_days_from_ce().to_be_bytes());
    mac
}

/// Computes the counter-key for a serial and product, valid until `valid_until` inclusive.
///
/// `secret` is the product's secret (see the module docs for the algorithm and its
/// requirements). Issue with `valid_until(issued_on)`.
pub fn counter_key(
    secret: &[u8],
    serial: &Serial,
    product: Product,
    valid_until: NaiveDate,
) -> CounterKey {
    let full = mac(secret, serial, product, valid_until)
        .finalize()
        .into_bytes();
    let mut key = [0u8; 8];
    key.copy_from_slice(&full[..8]);
    CounterKey::from_bytes(key)
}

/// Last day a counter-key issued on `issued_on` is valid: the next day.
///
/// Saturates at the last date `chrono` represents (year 262142), which no real issue reaches.
pub fn valid_until(issued_on: NaiveDate) -> NaiveDate {
    issued_on
        .checked_add_days(Days::new(OFFLINE_VALID_DAYS.unsigned_abs()))
        .unwrap_or(NaiveDate::MAX)
}

/// Terminal side: checks `key` against this terminal's serial and product on `today`, and
/// returns the key's last valid day.
///
/// Tries `valid_until` = `today ..= today + OFFLINE_VALID_DAYS`, comparing MACs in constant
/// time. Fails with [`OfflineError::Invalid`] when none matches: a key for another serial or
/// product, a forged or mistyped key, or an expired one (the terminal cannot tell these apart).
pub fn verify_counter_key(
    secret: &[u8],
    serial: &Serial,
    product: Product,
    key: &CounterKey,
    today: NaiveDate,
) -> Result<NaiveDate, OfflineError> {
    (0..=OFFLINE_VALID_DAYS.unsigned_abs())
        .filter_map(|ahead| today.checked_add_days(Days::new(ahead)))
        .find(|&candidate| {
            mac(secret, serial, product, candidate)
                .verify_truncated_left(key.as_bytes())
                .is_ok()
        })
        .ok_or(OfflineError::Invalid)
}

/// Server side: checks `key` when its last valid day is known, telling an expired key
/// ([`OfflineError::Expired`]) from one that was never issued ([`OfflineError::Invalid`]).
///
/// Succeeds exactly when [`verify_counter_key`] on `today` would accept the key with this
/// `valid_until`.
pub fn check_counter_key(
    secret: &[u8],
    serial: &Serial,
    product: Product,
    key: &CounterKey,
    valid_until: NaiveDate,
    today: NaiveDate,
) -> Result<(), OfflineError> {
    mac(secret, serial, product, valid_until)
        .verify_truncated_left(key.as_bytes())
        .map_err(|_| OfflineError::Invalid)?;
    if today > valid_until {
        return Err(OfflineError::Expired { valid_until });
    }
    let days_ahead = valid_until.signed_duration_since(today).num_days();
    if days_ahead > OFFLINE_VALID_DAYS {
        return Err(OfflineError::NotYetValid { valid_until });
    }
    Ok(())
}

/// The hardware-id prefix of a serial: its first 4 bytes (8 hex digits).
///
/// The manual calls the serial "hardware id prefix + challenge": in its examples the serial
/// `50026B77605FA3F8` and the activation code `50026B7793D68451` share their first 8 hex
/// digits with the terminal's hardware id `50026B77825EECA5`; the last 4 bytes vary per
/// request. Support can use the prefix to check that a serial read over the phone belongs to
/// the expected terminal. The prefix is not secret and proves nothing on its own.
pub fn serial_hardware_prefix(serial: &Serial) -> [u8; 4] {
    let bytes = serial.as_bytes();
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"easycash offline secret, 32 byte";

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn serial() -> Serial {
        Serial::parse("50026B77605FA3F8").unwrap()
    }

    #[test]
    fn a_key_is_valid_until_the_day_after_issue() {
        assert_eq!(valid_until(day(2023, 3, 27)), day(2023, 3, 28));
        assert_eq!(valid_until(day(2023, 12, 31)), day(2024, 1, 1));
        assert_eq!(valid_until(NaiveDate::MAX), NaiveDate::MAX);
    }

    #[test]
    fn a_fresh_key_is_accepted_on_its_issue_day_and_the_next() {
        let issued = day(2023, 3, 27);
        let until = valid_until(issued);
        let key = counter_key(SECRET, &serial(), Product::EasyCash, until);
        for today in [issued, until] {
            assert_eq!(
                verify_counter_key(SECRET, &serial(), Product::EasyCash, &key, today),
                Ok(until),
                "on {today}"
            );
            assert_eq!(
                check_counter_key(SECRET, &serial(), Product::EasyCash, &key, until, today),
                Ok(())
            );
        }
    }

    #[test]
    fn a_key_is_refused_the_day_after_it_expires() {
        let until = valid_until(day(2023, 3, 27));
        let key = counter_key(SECRET, &serial(), Product::EasyCash, until);
        let later = day(2023, 3, 29);
        assert_eq!(
            verify_counter_key(SECRET, &serial(), Product::EasyCash, &key, later),
            Err(OfflineError::Invalid)
        );
        assert_eq!(
            check_counter_key(SECRET, &serial(), Product::EasyCash, &key, until, later),
            Err(OfflineError::Expired { valid_until: until })
        );
    }

    #[test]
    fn a_key_valid_too_far_ahead_is_not_yet_valid() {
        let until = day(2023, 4, 10);
        let key = counter_key(SECRET, &serial(), Product::EasyCash, until);
        let today = day(2023, 3, 27);
        assert_eq!(
            verify_counter_key(SECRET, &serial(), Product::EasyCash, &key, today),
            Err(OfflineError::Invalid)
        );
        assert_eq!(
            check_counter_key(SECRET, &serial(), Product::EasyCash, &key, until, today),
            Err(OfflineError::NotYetValid { valid_until: until })
        );
    }

    #[test]
    fn a_key_for_a_serial_with_one_bit_flipped_is_refused() {
        let today = day(2023, 3, 27);
        let key = counter_key(SECRET, &serial(), Product::EasyCash, valid_until(today));
        for bit in 0..64 {
            let mut bytes = *serial().as_bytes();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let other = Serial::from_bytes(bytes);
            assert_eq!(
                verify_counter_key(SECRET, &other, Product::EasyCash, &key, today),
                Err(OfflineError::Invalid),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn a_key_for_another_product_is_refused() {
        let today = day(2023, 3, 27);
        let key = counter_key(SECRET, &serial(), Product::EasyCash, valid_until(today));
        for product in Product::ALL.into_iter().filter(|&p| p != Product::EasyCash) {
            assert_eq!(
                verify_counter_key(SECRET, &serial(), product, &key, today),
                Err(OfflineError::Invalid),
                "{product}"
            );
        }
    }

    #[test]
    fn a_key_made_with_another_secret_is_refused() {
        let today = day(2023, 3, 27);
        let key = counter_key(
            b"some other product secret, 32 by",
            &serial(),
            Product::EasyCash,
            valid_until(today),
        );
        assert_eq!(
            verify_counter_key(SECRET, &serial(), Product::EasyCash, &key, today),
            Err(OfflineError::Invalid)
        );
    }

    #[test]
    fn made_up_keys_are_refused() {
        let today = day(2023, 3, 27);
        // The manual's example key and a few arbitrary ones.
        for text in [
            "AF67 142D 1048 F615",
            "0000 0000 0000 0000",
            "FFFF FFFF FFFF FFFF",
            "E9BD 4EF6 CC57 5DC4",
        ] {
            let key = CounterKey::parse_grouped(text).unwrap();
            assert_eq!(
                verify_counter_key(SECRET, &serial(), Product::EasyCash, &key, today),
                Err(OfflineError::Invalid),
                "{text}"
            );
        }
    }

    #[test]
    fn a_key_with_one_bit_flipped_is_refused() {
        let today = day(2023, 3, 27);
        let key = counter_key(SECRET, &serial(), Product::EasyCash, valid_until(today));
        for bit in 0..64 {
            let mut bytes = *key.as_bytes();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let forged = CounterKey::from_bytes(bytes);
            assert_eq!(
                verify_counter_key(SECRET, &serial(), Product::EasyCash, &forged, today),
                Err(OfflineError::Invalid),
                "bit {bit}"
            );
        }
    }

    /// Pins algorithm version 1. The expected value was computed independently (Python's
    /// `hmac` and `hashlib`) from the layout in the module docs; if this fails, the algorithm
    /// changed and every terminal in the field would refuse the new keys.
    #[test]
    fn known_answer_for_the_manual_serial() {
        let key = counter_key(
            b"0123456789abcdef0123456789abcdef",
            &serial(),
            Product::EasyCash,
            day(2023, 3, 28),
        );
        assert_eq!(key.grouped(), "E0B9 38CD 6E38 006E");
    }

    #[test]
    fn the_serial_starts_with_the_hardware_id_prefix() {
        assert_eq!(serial_hardware_prefix(&serial()), [0x50, 0x02, 0x6B, 0x77]);
        let hardware_id = crate::values::HardwareId::parse("50026B77825EECA5").unwrap();
        assert_eq!(
            serial_hardware_prefix(&serial()),
            hardware_id.as_bytes()[..4]
        );
    }
}
