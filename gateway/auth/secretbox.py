"""Secrets at rest: AES-256-GCM under GATEWAY_MASTER_KEY, bound to what they belong to."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


class SecretBox:
    def __init__(self, master_key_b64: str) -> None:
        try:
            key = base64.urlsafe_b64decode(master_key_b64 + "=" * (-len(master_key_b64) % 4))
        except (binascii.Error, ValueError):
            raise ValueError("GATEWAY_MASTER_KEY must be URL-safe base64") from None
        if len(key) != 32:
            raise ValueError("GATEWAY_MASTER_KEY must decode to exactly 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: str) -> bytes:
        """Encrypt `plaintext`; `context` (e.g. the key id) must match when opening."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def open(self, sealed: bytes, context: str) -> str:
        if not sealed or sealed[:1] != _VERSION:
            raise ValueError("unknown sealed secret version")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], context.encode()).decode()
        except InvalidTag:
            raise ValueError("secret does not open with this master key") from None


def generate_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()
