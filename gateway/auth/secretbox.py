"""Secrets at rest: AES-256-GCM under GATEWAY_MASTER_KEY, bound to what they belong to.

A box seals under its current key and opens with the current key or, during a master key
rotation (`gateway master-key rotate`), with the previous one (GATEWAY_MASTER_KEY_PREVIOUS):
a process still running with the old key may seal a secret after the rotation has re-sealed
the others, and the gateways restarted with the new key must still open it."""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = b"\x01"


def _aead(master_key_b64: str, name: str) -> AESGCM:
    try:
        key = base64.urlsafe_b64decode(master_key_b64 + "=" * (-len(master_key_b64) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} must be URL-safe base64") from None
    if len(key) != 32:
        raise ValueError(f"{name} must decode to exactly 32 bytes")
    return AESGCM(key)


class SecretBox:
    def __init__(self, master_key_b64: str, previous_key_b64: str | None = None) -> None:
        self._aead = _aead(master_key_b64, "GATEWAY_MASTER_KEY")
        self._openers = [self._aead]
        if previous_key_b64 is not None:
            self._openers.append(_aead(previous_key_b64, "GATEWAY_MASTER_KEY_PREVIOUS"))

    def seal(self, plaintext: str, context: str) -> bytes:
        """Encrypt `plaintext` under the current key; `context` (e.g. the key id) must match
        when opening."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def open(self, sealed: bytes, context: str) -> str:
        """The plaintext of a secret sealed under the current or the previous key. Raises
        ValueError (never quoting the secret) when neither opens it."""
        if not sealed or sealed[:1] != _VERSION:
            raise ValueError("unknown sealed secret version")
        for aead in self._openers:
            try:
                return aead.decrypt(sealed[1:13], sealed[13:], context.encode()).decode()
            except InvalidTag:
                continue
        raise ValueError("secret does not open with this master key")


def generate_master_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()
