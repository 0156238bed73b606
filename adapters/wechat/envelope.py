"""What wraps every WeChat Pay API v3 message: JSON and times as WeChat writes them, the
merchant's `Authorization` and WeChat Pay's response signatures, AEAD_AES_256_GCM resources and
the notification envelope. Pure and I/O-free; the wire rules are in `adapters.wechat.protocol`'s
docstring.

Signatures are the kernel's RSA-SHA256 (`adapters.kernel.crypto`) over WeChat's messages:
`METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n` for requests, `TIMESTAMP\\nNONCE\\nBODY\\n` for answers
and notifications.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.chinatime import from_rfc3339, to_rfc3339
from adapters.kernel.crypto import rsa_sign, rsa_verify
from adapters.kernel.transport import header

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
"""The `Authorization` scheme and the `Wechatpay-Signature-Type` value."""

TIMESTAMP_WINDOW_S = 300
"""A signed request, response or notification whose timestamp is further than this from the
receiver's clock is refused (the real API refuses requests beyond five minutes and tells
merchants to do the same)."""

HEADER_TIMESTAMP = "Wechatpay-Timestamp"
HEADER_NONCE = "Wechatpay-Nonce"
HEADER_SIGNATURE = "Wechatpay-Signature"
HEADER_SERIAL = "Wechatpay-Serial"
HEADER_SIGNATURE_TYPE = "Wechatpay-Signature-Type"

ALGORITHM_AES_GCM = "AEAD_AES_256_GCM"


# ---- encoding ----------------------------------------------------------------------------

_NONCE_ALPHABET = string.ascii_uppercase + string.digits


def new_nonce(length: int = 32) -> str:
    """A random nonce_str (the SDKs use 32 upper-case letters and digits)."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def new_aead_nonce() -> str:
    """The 12-character nonce of AEAD_AES_256_GCM resources (used as its UTF-8 bytes)."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12))


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON, as the real API and our simulator send it."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


format_time = to_rfc3339
"""RFC 3339 in China time, as WeChat writes times: `2018-06-08T10:34:56+08:00`."""
parse_time = from_rfc3339
"""`2018-06-08T10:34:56+08:00` -> an aware datetime. Raises ValueError."""


def serial_hex(serial_number: int) -> str:
    """A certificate serial the way WeChat writes it: upper-case hex, 40 digits for the usual
    160-bit serials (`5157F09EFDC096DE15EBE81A47057A7232F1B8E1`)."""
    return f"{serial_number:040X}"


def serial_int(text: str) -> int:
    """`5157F0…` -> int, for comparison regardless of case and leading zeros. Raises
    ValueError."""
    if not text or not all(c in string.hexdigits for c in text):
        raise ValueError(f"not a hex serial: {text!r}")
    return int(text, 16)


def certificate_cn(cert: x509.Certificate) -> str | None:
    """The subject CN (on a merchant API certificate: the mchid)."""
    attrs = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else None
    return value if isinstance(value, str) else None


# ---- signatures --------------------------------------------------------------------------


class SignatureError(ValueError):
    """A signature that is missing, malformed, from an unknown certificate, stale or wrong."""


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """`METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`, the message a merchant signs."""
    head = f"{method.upper()}\n{url}\n{timestamp}\n{nonce}\n".encode()
    return head + body + b"\n"


def response_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """`TIMESTAMP\\nNONCE\\nBODY\\n`, the message WeChat Pay signs on answers and notifications."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parts of a `WECHATPAY2-SHA256-RSA2048` Authorization header."""

    mchid: str
    nonce_str: str
    timestamp: str
    serial_no: str
    signature: str


_AUTH_PARAM = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*(?:,|$)')


def build_authorization(
    *,
    mchid: str,
    serial_no: str,
    private_key: RSAPrivateKey,
    method: str,
    url: str,
    body: bytes,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """The merchant's Authorization header for one request (`url` = path and query)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce_str = nonce or new_nonce()
    signature = rsa_sign(private_key, request_message(method, url, ts, nonce_str, body))
    return (
        f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce_str}",timestamp="{ts}",'
        f'serial_no="{serial_no}",signature="{signature}"'
    )


def parse_authorization(header: str) -> Authorization:
    """Parse an Authorization header (parameters in any order). Raises SignatureError."""
    scheme, _, params = header.strip().partition(" ")
    if scheme != SCHEMA:
        raise SignatureError("unsupported authorization scheme")
    values: dict[str, str] = {}
    pos = 0
    params = params.strip()
    while pos < len(params):
        match = _AUTH_PARAM.match(params, pos)
        if match is None:
            raise SignatureError("malformed authorization parameters")
        values[match.group(1)] = match.group(2)
        pos = match.end()
    try:
        auth = Authorization(
            mchid=values["mchid"],
            nonce_str=values["nonce_str"],
            timestamp=values["timestamp"],
            serial_no=values["serial_no"],
            signature=values["signature"],
        )
    except KeyError as exc:
        raise SignatureError(f"authorization lacks {exc.args[0]}") from None
    if not auth.timestamp.isdigit():
        raise SignatureError("authorization timestamp is not a number")
    return auth


def check_timestamp(timestamp: str, now: float | None = None) -> None:
    """Raises SignatureError when `timestamp` (unix seconds) is outside the window."""
    if not timestamp.isdigit():
        raise SignatureError("timestamp is not a number")
    clock = time.time() if now is None else now
    if abs(clock - int(timestamp)) > TIMESTAMP_WINDOW_S:
        raise SignatureError("timestamp outside the allowed window")


def sign_headers(
    private_key: RSAPrivateKey,
    serial_no: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """WeChat Pay's signature headers for an answer or a notification body."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce_str = nonce or new_nonce()
    return {
        HEADER_TIMESTAMP: ts,
        HEADER_NONCE: nonce_str,
        HEADER_SIGNATURE: rsa_sign(private_key, response_message(ts, nonce_str, body)),
        HEADER_SERIAL: serial_no,
        HEADER_SIGNATURE_TYPE: SCHEMA,
    }


def has_signature(headers: Mapping[str, str]) -> bool:
    return header(headers, HEADER_SIGNATURE) is not None


def verify_headers(
    headers: Mapping[str, str],
    body: bytes,
    platform_keys: Mapping[int, RSAPublicKey],
    *,
    now: float | None = None,
) -> str:
    """Verify WeChat Pay's signature on an answer or a notification. `platform_keys` maps
    platform certificate serials (as int) to their public keys. Returns the serial used.
    Raises SignatureError."""
    found = {
        name: header(headers, name)
        for name in (HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SERIAL)
    }
    for name, value in found.items():
        if value is None:
            raise SignatureError(f"missing header {name}")
    timestamp, nonce, signature, serial = (str(value) for value in found.values())
    sig_type = header(headers, HEADER_SIGNATURE_TYPE)
    if sig_type is not None and sig_type != SCHEMA:
        raise SignatureError(f"unsupported signature type {sig_type!r}")
    try:
        key = platform_keys.get(serial_int(serial))
    except ValueError:
        key = None
    if key is None:
        raise SignatureError("unknown platform certificate serial")
    check_timestamp(timestamp, now)
    if not rsa_verify(key, response_message(timestamp, nonce, body), signature):
        raise SignatureError("signature does not verify")
    return serial


# ---- AEAD_AES_256_GCM --------------------------------------------------------------------


class DecryptError(ValueError):
    """A resource that does not decrypt with the APIv3 key (wrong key or tampered)."""


def aes_gcm_encrypt(apiv3_key: bytes, nonce: str, associated_data: str, plaintext: str) -> str:
    """base64(ciphertext || tag), as WeChat Pay encrypts notification resources and
    certificates with the merchant's APIv3 key."""
    if len(apiv3_key) != 32:
        raise ValueError("the APIv3 key must be 32 bytes")
    sealed = AESGCM(apiv3_key).encrypt(
        nonce.encode(), plaintext.encode("utf-8"), associated_data.encode()
    )
    return base64.b64encode(sealed).decode("ascii")


def aes_gcm_decrypt(apiv3_key: bytes, nonce: str, associated_data: str, ciphertext: str) -> str:
    """Raises DecryptError."""
    if len(apiv3_key) != 32:
        raise DecryptError("the APIv3 key must be 32 bytes")
    try:
        sealed = base64.b64decode(ciphertext, validate=True)
        plain = AESGCM(apiv3_key).decrypt(nonce.encode(), sealed, associated_data.encode())
        return plain.decode("utf-8")
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise DecryptError("resource does not decrypt") from exc


# ---- notifications -----------------------------------------------------------------------


def build_notification(
    *,
    apiv3_key: bytes,
    event_id: str,
    create_time: datetime,
    event_type: str,
    summary: str,
    original_type: str,
    resource: Mapping[str, Any],
    nonce: str | None = None,
) -> bytes:
    """The body of a notification, its resource encrypted with the APIv3 key."""
    aead_nonce = nonce or new_aead_nonce()
    plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":"))
    envelope = {
        "id": event_id,
        "create_time": format_time(create_time),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary,
        "resource": {
            "original_type": original_type,
            "algorithm": ALGORITHM_AES_GCM,
            "ciphertext": aes_gcm_encrypt(apiv3_key, aead_nonce, original_type, plaintext),
            "associated_data": original_type,
            "nonce": aead_nonce,
        },
    }
    return dumps(envelope)


@dataclass(frozen=True, slots=True)
class OpenedNotification:
    event_id: str
    event_type: str
    resource: Mapping[str, Any]


def open_notification(body: bytes, apiv3_key: bytes) -> OpenedNotification:
    """Parse a (signature-verified) notification body and decrypt its resource. Raises
    ValueError (DecryptError for a resource that does not decrypt)."""
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError("notification body is not JSON") from exc
    if not isinstance(envelope, dict):
        raise ValueError("notification body is not an object")
    if envelope.get("resource_type") != "encrypt-resource":
        raise ValueError("unexpected resource_type")
    resource = envelope.get("resource")
    if not isinstance(resource, dict):
        raise ValueError("notification has no resource")
    if resource.get("algorithm") != ALGORITHM_AES_GCM:
        raise ValueError("unsupported resource algorithm")
    nonce, ciphertext = resource.get("nonce"), resource.get("ciphertext")
    associated = resource.get("associated_data") or ""
    if not isinstance(nonce, str) or not isinstance(ciphertext, str):
        raise ValueError("resource lacks nonce or ciphertext")
    if not isinstance(associated, str):
        raise ValueError("associated_data is not a string")
    plain = aes_gcm_decrypt(apiv3_key, nonce, associated, ciphertext)
    try:
        data = json.loads(plain)
    except json.JSONDecodeError as exc:
        raise ValueError("decrypted resource is not JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("decrypted resource is not an object")
    event_type = envelope.get("event_type")
    event_id = envelope.get("id")
    if not isinstance(event_type, str) or not isinstance(event_id, str):
        raise ValueError("notification lacks id or event_type")
    return OpenedNotification(event_id=event_id, event_type=event_type, resource=data)
