"""Verify what license-ledger signs, from its JSON alone (Python 3.8+, `pip install cryptography`).

Every signature is Ed25519 (RFC 8032) over the bytes built below, sent as 128 lower-case hex
digits. Integers are big-endian; str(s) is a 4-byte length then the UTF-8 bytes.
"""
import calendar
import hashlib
import struct
from datetime import date, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _str(text):
    raw = text.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def _opt(value, encode):
    return b"\x00" if value is None else b"\x01" + encode(value)


def _micros(text):
    """'2023-03-27T17:31:32.123456Z' -> microseconds since 1970-01-01T00:00:00Z."""
    base, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(datetime.fromisoformat(base).timetuple())
    return seconds * 1_000_000 + int((fraction + "000000")[:6])


def key_id(public_key_hex):
    """The id of a key: the first 16 hex digits of SHA-256 of its 32 bytes."""
    return hashlib.sha256(bytes.fromhex(public_key_hex)).hexdigest()[:16]


def _check(public_key_hex, signature_hex, message):
    # Raises cryptography.exceptions.InvalidSignature when the signature does not match.
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    key.verify(bytes.fromhex(signature_hex), message)


def answer_message(answer, key_id_text):
    """The signed bytes of a check-in answer (`answer` is the JSON object `answer`)."""
    version = answer.get("version", 1)  # answers without `version` are version 1
    if version not in (1, 2) or (version == 1) != ("cnpj" not in answer):
        raise ValueError("unknown answer version, or a cnpj it does not sign")
    msg = _str(key_id_text) + b"license-ledger/answer/v%d\x00" % version
    if version == 2:
        msg += _str(answer["cnpj"])
    msg += _opt(answer.get("license_id"), lambda v: struct.pack(">I", int(v)))
    msg += bytes.fromhex(answer["hardware_id"]) + bytes.fromhex(answer["hardware_key"])
    msg += _str(answer["product"]) + _str(answer["outcome"])
    msg += _opt(answer.get("expires_on"),
                lambda d: struct.pack(">i", date.fromisoformat(d).toordinal()))
    msg += _opt(answer.get("days_left"), lambda n: struct.pack(">q", n))
    resources = answer.get("resources") or {}
    msg += struct.pack(">I", len(resources))
    for name in sorted(resources, key=lambda k: k.encode("ascii")):
        value = resources[name]
        msg += bytes([len(name)]) + name.encode("ascii")
        if isinstance(value, bool):
            msg += b"\x00" + bytes([value])
        elif isinstance(value, int):
            msg += b"\x01" + struct.pack(">q", value)
        else:
            msg += b"\x02" + _str(value)
    msg += struct.pack(">I", len(answer["messages"]))
    msg += b"".join(_str(m) for m in answer["messages"])
    msg += struct.pack(">q", _micros(answer["issued_at"]))
    return msg + _opt(answer.get("nonce"), _str)


def verify_answer(body, public_key_hex, cnpj, product, hardware_id, nonce=None):
    """A terminal's check of the JSON of POST /v1/checkin, signed by the server whose key
    (GET /v1/keys `public_key`) it trusts; raises unless the answer is for this terminal."""
    answer = body["answer"]
    _check(public_key_hex, body["signature"], answer_message(answer, body["key_id"]))
    if answer.get("version", 1) >= 2 and answer["cnpj"] != cnpj:
        raise ValueError("the answer is for another customer")
    if answer["product"] != product or answer["hardware_id"].upper() != hardware_id.upper():
        raise ValueError("the answer is for another product or terminal")
    if answer.get("nonce") != nonce:
        raise ValueError("the answer does not echo this check-in's nonce")
    return answer["outcome"]


def certificate_message(cert):
    """The signed bytes of a relay certificate (the JSON object `certificate`)."""
    return (b"license-ledger/relay-certificate/v1" + _str(cert["cnpj"])
            + bytes.fromhex(cert["relay_public_key"])
            + struct.pack(">q", _micros(cert["valid_until"])) + _str(cert["issuer_key_id"]))


def verify_relay_answer(body, central_public_key_hex, cnpj, product, hardware_id, nonce=None):
    """The same check for an answer of a relay: its certificate, signed by the central key,
    must name this customer and the key that signed the answer, and be valid when it was
    issued."""
    cert = body["certificate"]
    _check(central_public_key_hex, cert["signature"], certificate_message(cert))
    if cert["cnpj"] != cnpj:
        raise ValueError("the relay is certified for another customer")
    if not key_id(cert["relay_public_key"]) == cert["relay_key_id"] == body["key_id"]:
        raise ValueError("the answer is not signed by the certified relay key")
    if _micros(body["answer"]["issued_at"]) > _micros(cert["valid_until"]):
        raise ValueError("the relay certificate had expired")
    return verify_answer(body, cert["relay_public_key"], cnpj, product, hardware_id, nonce)


def head_message(position, hash_hex):
    """The signed bytes of a log head (GET /v1/audit/head, and each of a relay feed page's
    `signatures`, which sign the head at each record's position)."""
    return b"license-ledger/head/v1" + struct.pack(">Q", position) + bytes.fromhex(hash_hex)


def verify_head(head, public_key_hex):
    """Checks GET /v1/audit/head (`head_position`, `head_hash`, `signature`)."""
    _check(public_key_hex, head["signature"],
           head_message(head["head_position"], head["head_hash"]))
