//! JSON schemas of the value types, for the server's OpenAPI description (feature `openapi`).
//!
//! Each schema describes the JSON form the type's own `Deserialize` accepts: the same
//! trimming, the same lengths, the same characters. What a pattern cannot say (check digits,
//! a CNPJ made of one repeated character) is in the description; the server answers 400 for
//! it. The canonical form the server writes back always matches the pattern too.

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::envelope::{Hash, StreamId};
use crate::values::{
    ActivationCode, Cnpj, CodeMac, ContractId, CounterKey, HardwareId, HardwareKey, LicenseId,
    Note, ProgramVersion, ResourceKey, ResourceValue, Resources, Serial, TerminalNumber, TradeName,
};

/// A string schema: `pattern`, optional lengths, a description and one example.
fn text(
    description: &str,
    pattern: &str,
    lengths: Option<(usize, usize)>,
    example: &str,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(lengths.map(|l| l.0))
        .max_length(lengths.map(|l| l.1))
        .examples([json!(example)])
        .into()
}

macro_rules! named {
    ($ty:ty, $name:literal, $schema:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

named!(
    Cnpj,
    "Cnpj",
    text(
        "CNPJ: 14 characters (12 of 0-9 or A-Z, either case, then two numeric check digits \
         that must match), with optional `.`, `/`, `-` punctuation and surrounding spaces on \
         input; written back as the 14 bare characters.",
        r"^\s*[0-9A-Za-z./-]+\s*$",
        None,
        "12345678000195",
    )
);

macro_rules! six_digits {
    ($ty:ty, $name:literal, $what:literal) => {
        named!(
            $ty,
            $name,
            text(
                concat!(
                    $what,
                    ": 1 to 6 digits, 1 to 999999, optionally after `#`; written back as \
                     6 zero-padded digits."
                ),
                r"^\s*#*[0-9]{1,6}\s*$",
                None,
                "000001",
            )
        );
    };
}
six_digits!(LicenseId, "LicenseId", "License id");
six_digits!(ContractId, "ContractId", "Contract id");

macro_rules! hex_schema {
    ($ty:ty, $name:literal, $what:literal, $pattern:literal, $example:literal) => {
        named!(
            $ty,
            $name,
            text(
                concat!(
                    $what,
                    ": hex digits, either case, surrounding spaces ignored; written back in \
                     upper case."
                ),
                $pattern,
                None,
                $example,
            )
        );
    };
}
hex_schema!(
    HardwareId,
    "HardwareId",
    "Terminal hardware id, 16",
    r"^\s*[0-9A-Fa-f]{16}\s*$",
    "00FF12AB34CD56EF"
);
hex_schema!(
    HardwareKey,
    "HardwareKey",
    "Terminal hardware key, 32",
    r"^\s*[0-9A-Fa-f]{32}\s*$",
    "0123456789ABCDEF0123456789ABCDEF"
);
hex_schema!(
    Serial,
    "Serial",
    "Serial number shown by an offline terminal, 16",
    r"^\s*[0-9A-Fa-f]{16}\s*$",
    "0011223344556677"
);
hex_schema!(
    ActivationCode,
    "ActivationCode",
    "Activation code, 16",
    r"^\s*[0-9A-Fa-f]{16}\s*$",
    "8899AABBCCDDEEFF"
);

hex_schema!(
    CounterKey,
    "CounterKey",
    "Counter-key for an offline activation, 16",
    r"^\s*[0-9A-Fa-f]{16}\s*$",
    "0A1B2C3D4E5F6071"
);

hex_schema!(
    CodeMac,
    "CodeMac",
    "MAC of an issued counter-key under the center's audit key (the log keeps it instead of the key), 64",
    r"^\s*[0-9A-Fa-f]{64}\s*$",
    "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF"
);

named!(
    TerminalNumber,
    "TerminalNumber",
    text(
        "Terminal number (\"Nº do Caixa\", \"Equipamento\"): 1 to 4 digits; written back with \
         at least two digits.",
        r"^\s*[0-9]{1,4}\s*$",
        None,
        "03",
    )
);

named!(
    ProgramVersion,
    "ProgramVersion",
    text(
        "A terminal program's version: 1 to 8 dot-separated parts of 1 to 9 digits, at most \
         32 characters, kept verbatim.",
        r"^\s*[0-9]{1,9}(\.[0-9]{1,9}){0,7}\s*$",
        None,
        "2.0.12.1",
    )
);

/// Text of 1 to `max` characters after trimming, with no control characters.
fn bounded(description: &str, max: usize, example: &str) -> RefOr<Schema> {
    text(
        description,
        r"^\s*[^\x00-\x1f\x7f-\x9f\s]([^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f\s])?\s*$",
        Some((1, max)),
        example,
    )
}

named!(
    TradeName,
    "TradeName",
    bounded(
        "A customer's trade name (\"Fantasia\"): 1 to 120 characters, trimmed, no control \
         characters.",
        TradeName::MAX_CHARS,
        "Mercado Bom Preço",
    )
);
named!(
    Note,
    "Note",
    bounded(
        "An operator's reason for an action: 1 to 500 characters, trimmed, no control \
         characters.",
        Note::MAX_CHARS,
        "pedido do cliente",
    )
);

named!(
    ResourceKey,
    "ResourceKey",
    text(
        "Name of a resource flag: a lower-case letter, then lower-case letters, digits and \
         `_`, at most 64 characters.",
        r"^\s*[a-z][a-z0-9_]{0,63}\s*$",
        None,
        "habilita_dav",
    )
);

named!(ResourceValue, "ResourceValue", {
    OneOfBuilder::new()
        .description(Some(
            "A resource's value: a flag, a count, or a text of at most 200 characters.",
        ))
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(ResourceValue::MAX_TEXT_CHARS)),
        )
        .into()
});

named!(
    Resources,
    "Resources",
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A license's resources (\"Recursos\"): at most 64 keys, each a resource key, each \
             value a flag, a count or a short text.",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\s*[a-z][a-z0-9_]{0,63}\s*$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(ResourceValue::schema(),)))
        .max_properties(Some(Resources::MAX_ENTRIES))
        .examples([json!({"habilita_dav": true, "caixas": 3})])
        .into()
);

named!(
    Hash,
    "Hash",
    text(
        "SHA-256 of a record in the hash chain: 64 lower-case hex digits.",
        r"^[0-9a-f]{64}$",
        None,
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    )
);

named!(
    StreamId,
    "StreamId",
    text(
        "A stream of the log: a lower-case category, `-`, then the entity's id.",
        r"^[a-z][A-Za-z0-9_.:-]{0,127}$",
        None,
        "license-002438",
    )
);
