//! Validated value types: once you hold one, it is valid (parse, don't validate twice).
//!
//! Every type here has a private representation, a `parse` that returns [`ValueError`] naming
//! what is wrong, and serde impls that go through `parse` on the way in, so a payload that
//! decodes is a payload whose values are valid. Binary (postcard) forms are compact where it
//! matters (hex ids as fixed byte arrays, license ids as integers); JSON forms are the strings
//! support staff read on screen.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Why a value failed to parse. `what` names the kind of value (e.g. "CNPJ").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {problem}")]
pub struct ValueError {
    /// The kind of value, as a user would name it ("CNPJ", "hardware id").
    pub what: &'static str,
    /// What is wrong with it, in a sentence fragment.
    pub problem: String,
}

impl ValueError {
    fn new(what: &'static str, problem: impl Into<String>) -> Self {
        Self {
            what,
            problem: problem.into(),
        }
    }
}

/// Upper-case hex digits (the hex value types' canonical form).
const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Implements `Display`-based string serde for types whose canonical form is a string.
macro_rules! string_serde {
    ($ty:ident) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $ty::parse(&text).map_err(de::Error::custom)
            }
        }
        impl FromStr for $ty {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                $ty::parse(s)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// CNPJ
// ---------------------------------------------------------------------------------------------

/// Brazilian company registry number (CNPJ), 14 characters with two check digits.
///
/// Accepts the classic numeric form and the alphanumeric form in force since July 2026 (first
/// twelve characters `0-9A-Z`, last two numeric check digits; each character weighs its ASCII
/// code minus 48, which for digits is the digit itself). Punctuation (`.`, `/`, `-`) and
/// surrounding spaces are ignored on input; the canonical form is the 14 bare characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cnpj([u8; 14]);

impl Cnpj {
    /// Parses and checks the two check digits.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "CNPJ";
        let mut chars = [0u8; 14];
        let mut n = 0usize;
        for c in input.trim().bytes() {
            match c {
                b'.' | b'/' | b'-' => continue,
                b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => {
                    if n == 14 {
                        return Err(ValueError::new(WHAT, "has more than 14 characters"));
                    }
                    chars[n] = c.to_ascii_uppercase();
                    n += 1;
                }
                _ => {
                    return Err(ValueError::new(
                        WHAT,
                        format!("contains {:?}; use digits, letters and . / -", c as char),
                    ))
                }
            }
        }
        if n != 14 {
            return Err(ValueError::new(
                WHAT,
                format!("has {n} characters, expected 14"),
            ));
        }
        Self::from_canonical(chars)
    }

    /// The CNPJ whose first twelve characters are `base` (`0-9A-Z`, either case), with its
    /// two check digits computed: how tools and tests make valid CNPJs.
    pub fn with_check_digits(base: &str) -> Result<Self, ValueError> {
        let bytes = base.as_bytes();
        if bytes.len() != 12 || !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(ValueError::new(
                "CNPJ",
                "a base is 12 characters of 0-9 and A-Z, before the check digits",
            ));
        }
        let mut chars = [0u8; 14];
        for (c, b) in chars.iter_mut().zip(bytes) {
            *c = b.to_ascii_uppercase();
        }
        chars[12] = b'0' + Self::check_digit(&chars[..12]);
        chars[13] = b'0' + Self::check_digit(&chars[..13]);
        Self::from_canonical(chars)
    }

    /// Checks 14 canonical characters (`0-9A-Z`, numeric check digits): the binary form.
    fn from_canonical(chars: [u8; 14]) -> Result<Self, ValueError> {
        const WHAT: &str = "CNPJ";
        if !chars[..12]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        {
            return Err(ValueError::new(
                WHAT,
                "contains a character other than 0-9 and A-Z",
            ));
        }
        if !chars[12].is_ascii_digit() || !chars[13].is_ascii_digit() {
            return Err(ValueError::new(WHAT, "check digits must be numeric"));
        }
        if chars[..12].iter().all(|&c| c == chars[0]) {
            return Err(ValueError::new(WHAT, "a repeated character is not a CNPJ"));
        }
        let d1 = Self::check_digit(&chars[..12]);
        let d2 = Self::check_digit(&chars[..13]);
        if chars[12] - b'0' != d1 || chars[13] - b'0' != d2 {
            return Err(ValueError::new(WHAT, "check digits do not match"));
        }
        Ok(Self(chars))
    }

    /// Computes the check digit for `base` (12 or 13 characters), weights 2..=9 from the right.
    fn check_digit(base: &[u8]) -> u8 {
        let sum: u32 = base
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &c)| u32::from(c - b'0') * (2 + (i as u32 % 8)))
            .sum();
        let rest = sum % 11;
        if rest < 2 {
            0
        } else {
            (11 - rest) as u8
        }
    }

    /// The 14 bare characters.
    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The conventional display form `12.345.678/0001-95`.
    pub fn formatted(&self) -> String {
        let s = self.as_str();
        format!(
            "{}.{}.{}/{}-{}",
            &s[0..2],
            &s[2..5],
            &s[5..8],
            &s[8..12],
            &s[12..14]
        )
    }
}

impl fmt::Display for Cnpj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for Cnpj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cnpj({})", self.as_str())
    }
}
impl FromStr for Cnpj {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        Cnpj::parse(s)
    }
}
impl Serialize for Cnpj {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.as_str())
        } else {
            self.0.serialize(s)
        }
    }
}
impl<'de> Deserialize<'de> for Cnpj {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Cnpj::parse(&text).map_err(de::Error::custom)
        } else {
            Cnpj::from_canonical(<[u8; 14]>::deserialize(d)?).map_err(de::Error::custom)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Six-digit numeric ids
// ---------------------------------------------------------------------------------------------

macro_rules! six_digit_id {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(u32);

        impl $ty {
            /// The largest id that fits the six-digit display.
            pub const MAX: u32 = 999_999;

            /// Parses one to six decimal digits (`002438` or `2438`); zero is not an id.
            pub fn parse(input: &str) -> Result<Self, ValueError> {
                let s = input.trim().trim_start_matches('#');
                if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ValueError::new($what, "expected 1 to 6 digits, e.g. 002438"));
                }
                let n: u32 = s.parse().map_err(|_| ValueError::new($what, "not a number"))?;
                Self::new(n)
            }

            /// Wraps a number in 1..=999999.
            pub fn new(n: u32) -> Result<Self, ValueError> {
                if n == 0 || n > Self::MAX {
                    return Err(ValueError::new($what, "must be between 1 and 999999"));
                }
                Ok(Self(n))
            }

            /// The number itself.
            pub fn get(self) -> u32 {
                self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:06}", self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:06})", stringify!($ty), self.0)
            }
        }
        impl FromStr for $ty {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                Self::parse(s)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_u32(self.0)
                }
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    Self::parse(&text).map_err(de::Error::custom)
                } else {
                    Self::new(u32::deserialize(d)?).map_err(de::Error::custom)
                }
            }
        }
    };
}

six_digit_id!(
    /// License id as the manual shows it: six digits, zero-padded (`002438`).
    LicenseId,
    "license id"
);
six_digit_id!(
    /// Contract id, six digits, zero-padded like license ids.
    ContractId,
    "contract id"
);

// ---------------------------------------------------------------------------------------------
// Fixed-length hex values
// ---------------------------------------------------------------------------------------------

macro_rules! hex_value {
    ($(#[$doc:meta])* $ty:ident, $len:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty([u8; $len]);

        impl $ty {
            /// Number of hex characters in the canonical form.
            pub const HEX_LEN: usize = $len * 2;

            /// Parses exactly `HEX_LEN` hex characters, either case.
            pub fn parse(input: &str) -> Result<Self, ValueError> {
                let s = input.trim();
                if s.len() != Self::HEX_LEN {
                    return Err(ValueError::new(
                        $what,
                        format!("has {} characters, expected {} hex digits", s.chars().count(), Self::HEX_LEN),
                    ));
                }
                let mut bytes = [0u8; $len];
                hex::decode_to_slice(s, &mut bytes)
                    .map_err(|_| ValueError::new($what, "contains a character that is not hex (0-9, A-F)"))?;
                Ok(Self(bytes))
            }

            /// Wraps raw bytes.
            pub fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // On the stack: exports and the feed write these for every check-in.
                let mut buf = [0u8; 2 * $len];
                for (pair, b) in buf.chunks_exact_mut(2).zip(self.0) {
                    pair[0] = HEX_UPPER[usize::from(b >> 4)];
                    pair[1] = HEX_UPPER[usize::from(b & 15)];
                }
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self)
            }
        }
        impl FromStr for $ty {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                Self::parse(s)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    self.0.serialize(s)
                }
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    Self::parse(&text).map_err(de::Error::custom)
                } else {
                    Ok(Self(<[u8; $len]>::deserialize(d)?))
                }
            }
        }
    };
}

hex_value!(
    /// A terminal's hardware id: 16 hex digits (`50026B77825EECA5`).
    HardwareId,
    8,
    "hardware id"
);
hex_value!(
    /// The license key a terminal presents: 32 hex digits (`88A7B56C2B3F326F91362A182483F63E`).
    /// The license table's "Hardware Key" column shows it.
    HardwareKey,
    16,
    "hardware key"
);
hex_value!(
    /// Offline-activation serial shown by a terminal: 16 hex digits (`50026B77605FA3F8`).
    Serial,
    8,
    "serial"
);
hex_value!(
    /// Emergency-release activation code: 16 hex digits (`50026B7793D68451`).
    ActivationCode,
    8,
    "activation code"
);
hex_value!(
    /// Counter-key ("contra-chave") read back to a terminal: 16 hex digits, shown in groups of
    /// four (`AF67 142D 1048 F615`).
    CounterKey,
    8,
    "counter-key"
);

hex_value!(
    /// What the log keeps of an issued offline counter-key instead of the key itself:
    /// HMAC-SHA-256 under the center's audit key (64 hex digits). It shows that a code was
    /// issued and lets the center recognise it, without letting a reader of the log use it
    /// (see [`crate::offline::code_mac`]).
    CodeMac,
    32,
    "code MAC"
);

impl CounterKey {
    /// Parses the grouped form a person types (`AF67 142D 1048 F615`); spaces are ignored.
    pub fn parse_grouped(input: &str) -> Result<Self, ValueError> {
        let compact: String = input.chars().filter(|c| !c.is_whitespace()).collect();
        Self::parse(&compact)
    }

    /// The form shown to support: four groups of four.
    pub fn grouped(&self) -> String {
        let s = self.to_string();
        format!("{} {} {} {}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded texts
// ---------------------------------------------------------------------------------------------

macro_rules! bounded_text {
    ($(#[$doc:meta])* $ty:ident, $min:literal, $max:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            /// Most characters accepted.
            pub const MAX_CHARS: usize = $max;

            /// Trims surrounding spaces; refuses control characters and lengths out of range.
            pub fn parse(input: &str) -> Result<Self, ValueError> {
                let s = input.trim();
                let n = s.chars().count();
                if n < $min {
                    return Err(ValueError::new($what, "must not be empty"));
                }
                if n > $max {
                    return Err(ValueError::new($what, format!("has {n} characters, at most {} allowed", $max)));
                }
                if s.chars().any(char::is_control) {
                    return Err(ValueError::new($what, "contains a control character"));
                }
                Ok(Self(s.to_owned()))
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.0)
            }
        }
        string_serde!($ty);
    };
}

bounded_text!(
    /// A customer's trade name ("Fantasia").
    TradeName,
    1,
    120,
    "trade name"
);
bounded_text!(
    /// A customer's partner ("Parceiro": the reseller that serves it).
    Partner,
    1,
    120,
    "partner"
);
bounded_text!(
    /// An IANA time zone name as written (`America/Manaus`); whether the zone exists is the
    /// server's check (its time-zone database), not the event's.
    TimeZoneName,
    1,
    64,
    "time zone"
);
bounded_text!(
    /// A free-text reason an operator gives for an action.
    Note,
    1,
    500,
    "note"
);

// ---------------------------------------------------------------------------------------------
// Small structured values
// ---------------------------------------------------------------------------------------------

/// A terminal's program version as it reports it (`2.0.12.1`, `1.4.019.003`): dot-separated
/// decimal parts, kept verbatim so leading zeros survive.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProgramVersion(String);

impl ProgramVersion {
    /// Most characters accepted.
    pub const MAX_CHARS: usize = 32;

    /// Parses 1 to 8 dot-separated groups of 1 to 9 digits.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "program version";
        let s = input.trim();
        if s.is_empty() || s.len() > Self::MAX_CHARS {
            return Err(ValueError::new(
                WHAT,
                "expected 1 to 32 characters, e.g. 2.0.12.1",
            ));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() > 8
            || parts
                .iter()
                .any(|p| p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(ValueError::new(
                WHAT,
                "expected dot-separated numbers, e.g. 2.0.12.1",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The version text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProgramVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for ProgramVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProgramVersion({})", self.0)
    }
}
string_serde!(ProgramVersion);

/// A terminal number as the manual shows it: "Nº do Caixa" and "Equipamento" (`03`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TerminalNumber(u16);

impl TerminalNumber {
    /// Largest number accepted.
    pub const MAX: u16 = 9999;

    /// Parses 1 to 4 digits (`03`, `3`).
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "terminal number";
        let s = input.trim();
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::new(WHAT, "expected 1 to 4 digits, e.g. 03"));
        }
        let n: u16 = s
            .parse()
            .map_err(|_| ValueError::new(WHAT, "not a number"))?;
        Self::new(n)
    }

    /// Wraps a number in 0..=9999.
    pub fn new(n: u16) -> Result<Self, ValueError> {
        if n > Self::MAX {
            return Err(ValueError::new("terminal number", "must be at most 9999"));
        }
        Ok(Self(n))
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for TerminalNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.0)
    }
}
impl fmt::Debug for TerminalNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TerminalNumber({:02})", self.0)
    }
}
impl Serialize for TerminalNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u16(self.0)
        }
    }
}
impl<'de> Deserialize<'de> for TerminalNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Self::parse(&text).map_err(de::Error::custom)
        } else {
            Self::new(u16::deserialize(d)?).map_err(de::Error::custom)
        }
    }
}

/// The products the vendor licenses. Codes are stable identifiers; new products are appended
/// at the end (the binary form is the variant's index, so order is part of the format).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Product {
    /// EasyCash, the point-of-sale program.
    #[serde(rename = "easycash")]
    EasyCash,
    /// Intellicash.
    #[serde(rename = "intellicash")]
    Intellicash,
    /// Notify agent.
    #[serde(rename = "notify")]
    Notify,
    /// NF-e Nota Fiscal.
    #[serde(rename = "nfe")]
    Nfe,
    /// Conciliador de cartões.
    #[serde(rename = "conciliador")]
    Conciliador,
    /// Intellistock.
    #[serde(rename = "intellistock")]
    Intellistock,
    /// TEF IWS.
    #[serde(rename = "tef_iws")]
    TefIws,
    /// EFD (SPED).
    #[serde(rename = "efd_sped")]
    EfdSped,
    /// Matriz e Filial.
    #[serde(rename = "matriz_filial")]
    MatrizFilial,
}

impl Product {
    /// Every product, in catalogue order.
    pub const ALL: [Product; 9] = [
        Product::EasyCash,
        Product::Intellicash,
        Product::Notify,
        Product::Nfe,
        Product::Conciliador,
        Product::Intellistock,
        Product::TefIws,
        Product::EfdSped,
        Product::MatrizFilial,
    ];

    /// Stable code used in the API and JSON.
    pub fn code(self) -> &'static str {
        match self {
            Product::EasyCash => "easycash",
            Product::Intellicash => "intellicash",
            Product::Notify => "notify",
            Product::Nfe => "nfe",
            Product::Conciliador => "conciliador",
            Product::Intellistock => "intellistock",
            Product::TefIws => "tef_iws",
            Product::EfdSped => "efd_sped",
            Product::MatrizFilial => "matriz_filial",
        }
    }

    /// The name the manual shows in the "Produto" column.
    pub fn display_name(self) -> &'static str {
        match self {
            Product::EasyCash => "EasyCash",
            Product::Intellicash => "Intellicash",
            Product::Notify => "Notify",
            Product::Nfe => "NF-e Nota Fiscal",
            Product::Conciliador => "Conciliador de cartões",
            Product::Intellistock => "Intellistock",
            Product::TefIws => "TEF IWS",
            Product::EfdSped => "EFD (SPED)",
            Product::MatrizFilial => "Matriz e Filial",
        }
    }

    /// Accepts the code or the display name, ignoring case.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.code().eq_ignore_ascii_case(s) || p.display_name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let codes: Vec<&str> = Self::ALL.iter().map(|p| p.code()).collect();
                ValueError::new(
                    "product",
                    format!("unknown {s:?}; known: {}", codes.join(", ")),
                )
            })
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}
impl FromStr for Product {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Resources ("Recursos")
// ---------------------------------------------------------------------------------------------

/// Name of a per-license resource flag (`habilita_dav`): lowercase ASCII, digits and `_`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey(String);

impl ResourceKey {
    /// Most characters accepted.
    pub const MAX_CHARS: usize = 64;

    /// Parses `[a-z][a-z0-9_]*`, at most 64 characters.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "resource key";
        let s = input.trim();
        let ok_first = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if !ok_first
            || s.len() > Self::MAX_CHARS
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ValueError::new(
                WHAT,
                "expected lowercase letters, digits and _ (at most 64), e.g. habilita_dav",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceKey({})", self.0)
    }
}
string_serde!(ResourceKey);

/// Value of a resource: a flag (`true`), a count, or a short text.
///
/// JSON shows the bare value (`true`, `3`, `"x"`); the binary form is tagged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ResourceValue {
    /// A flag such as `habilita_dav = true`.
    Bool(bool),
    /// A count.
    Int(i64),
    /// A short text, at most 200 characters.
    Text(String),
}

impl ResourceValue {
    /// Most characters in a text value.
    pub const MAX_TEXT_CHARS: usize = 200;

    fn text(s: String) -> Result<Self, ValueError> {
        if s.chars().count() > Self::MAX_TEXT_CHARS || s.chars().any(char::is_control) {
            return Err(ValueError::new(
                "resource value",
                "text must be at most 200 characters with no control characters",
            ));
        }
        Ok(Self::Text(s))
    }
}

#[derive(Serialize, Deserialize)]
enum TaggedResourceValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl Serialize for ResourceValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match self {
                ResourceValue::Bool(b) => s.serialize_bool(*b),
                ResourceValue::Int(i) => s.serialize_i64(*i),
                ResourceValue::Text(t) => s.serialize_str(t),
            }
        } else {
            match self {
                ResourceValue::Bool(b) => TaggedResourceValue::Bool(*b),
                ResourceValue::Int(i) => TaggedResourceValue::Int(*i),
                ResourceValue::Text(t) => TaggedResourceValue::Text(t.clone()),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for ResourceValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            struct V;
            impl de::Visitor<'_> for V {
                type Value = ResourceValue;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a boolean, an integer or a string")
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<ResourceValue, E> {
                    Ok(ResourceValue::Bool(v))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<ResourceValue, E> {
                    Ok(ResourceValue::Int(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<ResourceValue, E> {
                    i64::try_from(v)
                        .map(ResourceValue::Int)
                        .map_err(|_| E::custom("integer too large"))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<ResourceValue, E> {
                    ResourceValue::text(v.to_owned()).map_err(E::custom)
                }
            }
            d.deserialize_any(V)
        } else {
            match TaggedResourceValue::deserialize(d)? {
                TaggedResourceValue::Bool(b) => Ok(ResourceValue::Bool(b)),
                TaggedResourceValue::Int(i) => Ok(ResourceValue::Int(i)),
                TaggedResourceValue::Text(t) => ResourceValue::text(t).map_err(de::Error::custom),
            }
        }
    }
}

/// A license's resources: at most [`Resources::MAX_ENTRIES`] keys, sorted (so the encoding is
/// canonical). Shared: cloning is a reference count, since every check-in answer carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resources(std::sync::Arc<BTreeMap<ResourceKey, ResourceValue>>);

impl Serialize for Resources {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(s)
    }
}

impl Resources {
    /// Most entries one license may carry.
    pub const MAX_ENTRIES: usize = 64;

    /// Builds from entries, refusing more than [`Resources::MAX_ENTRIES`].
    pub fn new(
        entries: impl IntoIterator<Item = (ResourceKey, ResourceValue)>,
    ) -> Result<Self, ValueError> {
        let map: BTreeMap<_, _> = entries.into_iter().collect();
        if map.len() > Self::MAX_ENTRIES {
            return Err(ValueError::new(
                "resources",
                format!("{} entries, at most {}", map.len(), Self::MAX_ENTRIES),
            ));
        }
        Ok(Self(std::sync::Arc::new(map)))
    }

    /// The value of one key.
    pub fn get(&self, key: &str) -> Option<&ResourceValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &ResourceValue)> {
        self.0.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Resources {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<ResourceKey, ResourceValue>::deserialize(d)?;
        Resources::new(map).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Compact binary forms of dates and times
// ---------------------------------------------------------------------------------------------

/// Serde for `NaiveDate` fields of payloads: `"2023-05-01"` in JSON, days since 0001-01-01
/// (an `i32` varint, two or three bytes) in the binary form. Use with `#[serde(with = ..)]`.
pub mod day {
    use chrono::{Datelike, NaiveDate};
    use serde::de::{self, Deserializer};
    use serde::{Deserialize, Serialize, Serializer};

    /// Serializes a date.
    pub fn serialize<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // Years 0 to 9999 (every date a license has) without chrono's format parser:
            // the same ten characters `%Y-%m-%d` writes, at a fraction of the cost (exports
            // write one or two dates per record).
            match u32::try_from(d.year()) {
                Ok(year) if year <= 9999 => {
                    let mut b = *b"0000-00-00";
                    for (at, n, width) in [(0, year, 4), (5, d.month(), 2), (8, d.day(), 2)] {
                        let mut n = n;
                        for k in (at..at + width).rev() {
                            b[k] = b'0' + (n % 10) as u8;
                            n /= 10;
                        }
                    }
                    // ASCII digits and dashes: always UTF-8.
                    s.serialize_str(std::str::from_utf8(&b).map_err(serde::ser::Error::custom)?)
                }
                _ => s.collect_str(&d.format("%Y-%m-%d")),
            }
        } else {
            d.num_days_from_ce().serialize(s)
        }
    }

    /// Deserializes a date.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|e| {
                de::Error::custom(format_args!(
                    "invalid date {text:?}: {e}; expected YYYY-MM-DD"
                ))
            })
        } else {
            let days = i32::deserialize(d)?;
            NaiveDate::from_num_days_from_ce_opt(days)
                .ok_or_else(|| de::Error::custom(format_args!("day {days} is out of range")))
        }
    }

    /// The same for `Option<NaiveDate>`.
    pub mod option {
        use chrono::NaiveDate;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        #[serde(transparent)]
        struct Wrap(#[serde(with = "super")] NaiveDate);

        /// Serializes an optional date.
        pub fn serialize<S: Serializer>(d: &Option<NaiveDate>, s: S) -> Result<S::Ok, S::Error> {
            d.map(Wrap).serialize(s)
        }

        /// Deserializes an optional date.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// Serde for `DateTime<Utc>` fields of payloads: RFC 3339 in JSON, microseconds since the
/// Unix epoch (an `i64` varint) in the binary form. Sub-microsecond precision is not kept, so
/// writers truncate first (`truncate_to_micros`).
pub mod micros {
    use chrono::{DateTime, TimeZone, Utc};
    use serde::de::{self, Deserializer};
    use serde::{Deserialize, Serialize, Serializer};

    /// Serializes a time.
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            t.serialize(s)
        } else {
            t.timestamp_micros().serialize(s)
        }
    }

    /// Deserializes a time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            DateTime::<Utc>::deserialize(d)
        } else {
            let m = i64::deserialize(d)?;
            Utc.timestamp_micros(m)
                .single()
                .ok_or_else(|| de::Error::custom(format_args!("time {m} is out of range")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cnpj_accepts_punctuated_and_bare_forms_with_valid_check_digits() {
        let a = Cnpj::parse("11.222.333/0001-81").unwrap();
        let b = Cnpj::parse("11222333000181").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.formatted(), "11.222.333/0001-81");
    }

    #[test]
    fn cnpj_with_check_digits_completes_a_base_and_refuses_a_bad_one() {
        assert_eq!(
            Cnpj::with_check_digits("112223330001").unwrap(),
            Cnpj::parse("11222333000181").unwrap()
        );
        assert_eq!(
            Cnpj::with_check_digits("12abc34501de").unwrap(),
            Cnpj::parse("12ABC34501DE35").unwrap()
        );
        for bad in [
            "11222333000",
            "1122233300011",
            "11222333000/",
            "111111111111",
        ] {
            assert!(Cnpj::with_check_digits(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cnpj_refuses_wrong_check_digits_and_lengths() {
        assert!(Cnpj::parse("11222333000182").is_err());
        assert!(Cnpj::parse("1122233300018").is_err());
        assert!(Cnpj::parse("112223330001811").is_err());
        assert!(Cnpj::parse("00000000000000").is_err());
        assert!(Cnpj::parse("11222333000l81").is_err());
    }

    #[test]
    fn cnpj_accepts_the_alphanumeric_form() {
        // Receita Federal's published example of an alphanumeric CNPJ.
        let c = Cnpj::parse("12.ABC.345/01DE-35").unwrap();
        assert_eq!(c.as_str(), "12ABC34501DE35");
        assert!(Cnpj::parse("12ABC34501DE36").is_err());
    }

    #[test]
    fn license_id_is_shown_zero_padded_and_parses_either_way() {
        let id = LicenseId::parse("002438").unwrap();
        assert_eq!(id.to_string(), "002438");
        assert_eq!(LicenseId::parse("2438").unwrap(), id);
        assert!(LicenseId::parse("0").is_err());
        assert!(LicenseId::parse("1234567").is_err());
        assert!(LicenseId::parse("12a").is_err());
    }

    #[test]
    fn hex_values_have_fixed_lengths_and_print_upper_case() {
        let h = HardwareId::parse("50026b77825eeca5").unwrap();
        assert_eq!(h.to_string(), "50026B77825EECA5");
        assert!(HardwareId::parse("50026B77825EECA").is_err());
        assert!(HardwareId::parse("50026B77825EECAG").is_err());
        let k = HardwareKey::parse("88A7B56C2B3F326F91362A182483F63E").unwrap();
        assert_eq!(k.to_string(), "88A7B56C2B3F326F91362A182483F63E");
        assert!(HardwareKey::parse("88A7B56C2B3F326F91").is_err());
    }

    #[test]
    fn counter_key_reads_and_prints_groups_of_four() {
        let c = CounterKey::parse_grouped("AF67 142D 1048 F615").unwrap();
        assert_eq!(c.grouped(), "AF67 142D 1048 F615");
        assert_eq!(c.to_string(), "AF67142D1048F615");
    }

    #[test]
    fn product_parses_code_or_display_name() {
        assert_eq!(Product::parse("EasyCash").unwrap(), Product::EasyCash);
        assert_eq!(Product::parse("nfe").unwrap(), Product::Nfe);
        assert_eq!(Product::parse("NF-e Nota Fiscal").unwrap(), Product::Nfe);
        assert!(Product::parse("Easy Cash").is_err());
    }

    #[test]
    fn program_version_keeps_leading_zeros() {
        assert_eq!(
            ProgramVersion::parse("1.4.019.003").unwrap().as_str(),
            "1.4.019.003"
        );
        assert!(ProgramVersion::parse("1..2").is_err());
        assert!(ProgramVersion::parse("v1.2").is_err());
    }

    #[test]
    fn resource_values_are_bare_in_json_and_tagged_in_binary() {
        let r = Resources::new([
            (
                ResourceKey::parse("habilita_dav").unwrap(),
                ResourceValue::Bool(true),
            ),
            (
                ResourceKey::parse("habilita_preventa").unwrap(),
                ResourceValue::Bool(false),
            ),
            (ResourceKey::parse("caixas").unwrap(), ResourceValue::Int(3)),
        ])
        .unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"caixas":3,"habilita_dav":true,"habilita_preventa":false}"#
        );
        assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), r);
        let bin = postcard::to_stdvec(&r).unwrap();
        assert_eq!(postcard::from_bytes::<Resources>(&bin).unwrap(), r);
    }

    #[test]
    fn texts_are_trimmed_and_bounded() {
        assert_eq!(
            TradeName::parse("  Mercado Bom  ").unwrap().as_str(),
            "Mercado Bom"
        );
        assert!(TradeName::parse("   ").is_err());
        assert!(TradeName::parse(&"x".repeat(121)).is_err());
        assert!(Note::parse("a\u{0}b").is_err());
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Dated {
        #[serde(with = "day")]
        on: chrono::NaiveDate,
        #[serde(with = "day::option")]
        until: Option<chrono::NaiveDate>,
        #[serde(with = "micros")]
        at: chrono::DateTime<chrono::Utc>,
    }

    #[test]
    fn dates_are_iso_text_in_json_and_compact_integers_in_binary() {
        let v = Dated {
            on: chrono::NaiveDate::from_ymd_opt(2023, 5, 1).unwrap(),
            until: None,
            at: "2023-03-27T17:31:32.123456Z".parse().unwrap(),
        };
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(
            json,
            r#"{"on":"2023-05-01","until":null,"at":"2023-03-27T17:31:32.123456Z"}"#
        );
        assert_eq!(serde_json::from_str::<Dated>(&json).unwrap(), v);
        let bin = postcard::to_stdvec(&v).unwrap();
        // 3 bytes of day, 1 of None, at most 9 of microseconds.
        assert!(bin.len() <= 13, "{} bytes", bin.len());
        assert_eq!(postcard::from_bytes::<Dated>(&bin).unwrap(), v);
        let bad = serde_json::from_str::<Dated>(
            r#"{"on":"01/05/2023","until":null,"at":"2023-03-27T17:31:32Z"}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("YYYY-MM-DD"));
    }

    #[test]
    fn cnpj_binary_form_is_checked_on_decode() {
        let c = Cnpj::parse("11222333000181").unwrap();
        let bin = postcard::to_stdvec(&c).unwrap();
        assert_eq!(bin.len(), 14);
        assert_eq!(postcard::from_bytes::<Cnpj>(&bin).unwrap(), c);
        let mut bad = bin.clone();
        bad[13] = b'2';
        assert!(postcard::from_bytes::<Cnpj>(&bad).is_err());
        let mut lower = bin;
        lower[0] = b'a';
        assert!(postcard::from_bytes::<Cnpj>(&lower).is_err());
    }
}
