"""Identifiers: a prefix and 24 characters of Crockford base32 (10 for the milliseconds since the
epoch, 50 bits; 14 for 70 random bits), so ids sort by creation time and fit the channels'
order-id limits (`pay_<24>_<seq>` is 30 characters; WeChat allows 32)."""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(millis, 10)}{_encode(secrets.randbits(70), 14)}"
