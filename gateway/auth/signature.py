"""Merchant request signatures (API.md §1.1). Pure: parsing, the signed message, and
verification for the three algorithms; no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from gateway.domain.errors import AuthFailed
from gateway.domain.records import KeyType as KeyType  # re-exported: callers sign with it

TIMESTAMP_WINDOW_S = 300
NONCE_TTL_S = 900
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_HEADER = re.compile(r"^GW1-(?P<alg>[A-Z0-9-]+) (?P<params>.*)$", re.DOTALL)
_PARAM = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    alg: str
    key_id: str
    timestamp: int
    nonce: str
    signature: bytes


def parse_authorization(header: str | None) -> ParsedAuthorization:
    if not header:
        raise AuthFailed("malformed_authorization", "The Authorization header is missing.")
    match = _HEADER.match(header.strip())
    if match is None:
        raise AuthFailed(
            "malformed_authorization",
            'Expected: GW1-<ALG> key_id="…",timestamp="…",nonce="…",signature="…".',
        )
    params: dict[str, str] = {}
    rest = match.group("params")
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise AuthFailed(
                "malformed_authorization", "The Authorization parameters are malformed."
            )
        if m.group(1) in params:
            raise AuthFailed("malformed_authorization", f"Parameter {m.group(1)} is repeated.")
        params[m.group(1)] = m.group(2)
        pos = m.end()
    expected = {"key_id", "timestamp", "nonce", "signature"}
    if set(params) != expected:
        missing = sorted(expected - set(params))
        extra = sorted(set(params) - expected)
        raise AuthFailed(
            "malformed_authorization",
            f"Authorization needs exactly key_id, timestamp, nonce and signature"
            f"{'; missing ' + ', '.join(missing) if missing else ''}"
            f"{'; unexpected ' + ', '.join(extra) if extra else ''}.",
        )
    if not _TIMESTAMP.match(params["timestamp"]):
        raise AuthFailed("malformed_authorization", "timestamp must be unix seconds.")
    if not _NONCE.match(params["nonce"]):
        raise AuthFailed(
            "malformed_authorization", "nonce must be 16 to 64 characters of [A-Za-z0-9_-]."
        )
    if not params["key_id"] or len(params["key_id"]) > 64:
        raise AuthFailed("malformed_authorization", "key_id is empty or too long.")
    try:
        signature = base64.b64decode(params["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise AuthFailed("malformed_authorization", "signature must be standard base64.") from None
    if not signature:
        raise AuthFailed("malformed_authorization", "signature is empty.")
    return ParsedAuthorization(
        alg=match.group("alg"),
        key_id=params["key_id"],
        timestamp=int(params["timestamp"]),
        nonce=params["nonce"],
        signature=signature,
    )


def signed_message(
    method: str, path_and_query: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    head = f"{method.upper()}\n{path_and_query}\n{timestamp}\n{nonce}\n".encode()
    return head + body + b"\n"


def check_timestamp(timestamp: int, now: float) -> None:
    if abs(now - timestamp) > TIMESTAMP_WINDOW_S:
        raise AuthFailed(
            "timestamp_out_of_window",
            f"timestamp is more than {TIMESTAMP_WINDOW_S} s from the gateway clock.",
        )


class Verifier:
    """A merchant key ready to verify signatures (parsed once, cached by the caller)."""

    __slots__ = ("_hmac_key", "_public_key", "key_type")

    def __init__(
        self,
        key_type: KeyType,
        *,
        secret: str | None = None,
        public_key_pem: str | None = None,
    ) -> None:
        self.key_type = key_type
        self._hmac_key: bytes | None = None
        self._public_key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | None = None
        if key_type is KeyType.HMAC_SHA256:
            if secret is None:
                raise ValueError("an HMAC key needs its secret")
            self._hmac_key = secret.encode()
        else:
            if public_key_pem is None:
                raise ValueError("an asymmetric key needs its public key")
            self._public_key = load_public_key(key_type, public_key_pem.encode())

    def verify(self, message: bytes, signature: bytes) -> bool:
        if self._hmac_key is not None:
            expected = hmac.new(self._hmac_key, message, hashlib.sha256).digest()
            return hmac.compare_digest(expected, signature)
        try:
            if isinstance(self._public_key, ed25519.Ed25519PublicKey):
                self._public_key.verify(signature, message)
            elif isinstance(self._public_key, rsa.RSAPublicKey):
                self._public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:  # pragma: no cover - constructor guarantees one of the above
                return False
        except InvalidSignature:
            return False
        return True


def load_public_key(key_type: KeyType, pem: bytes) -> ed25519.Ed25519PublicKey | rsa.RSAPublicKey:
    """Parse a PEM SubjectPublicKeyInfo of the given type; ValueError with a clear message."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM SubjectPublicKeyInfo public key: {exc}") from None
    if key_type is KeyType.ED25519:
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError("the key is not an Ed25519 public key")
        return key
    if key_type is KeyType.RSA_SHA256:
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("the key is not an RSA public key")
        if key.key_size < 2048:
            raise ValueError("RSA keys must have 2048 bits or more")
        return key
    raise ValueError(f"{key_type} keys have no public key")


def sign(
    key_type: KeyType,
    message: bytes,
    *,
    secret: str | None = None,
    private_key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | None = None,
) -> bytes:
    """Sign as a merchant would (used by tests, the examples and the load generator)."""
    if key_type is KeyType.HMAC_SHA256:
        assert secret is not None
        return hmac.new(secret.encode(), message, hashlib.sha256).digest()
    if key_type is KeyType.ED25519:
        assert isinstance(private_key, ed25519.Ed25519PrivateKey)
        return private_key.sign(message)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    return private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def authorization_header(
    key_type: KeyType, key_id: str, timestamp: int, nonce: str, signature: bytes
) -> str:
    sig = base64.b64encode(signature).decode()
    return (
        f'GW1-{key_type.header_alg} key_id="{key_id}",timestamp="{timestamp}",'
        f'nonce="{nonce}",signature="{sig}"'
    )
