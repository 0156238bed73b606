"""Exact conversion between minor units (fen) and the two-decimal yuan strings some channels
carry. Never through floats."""

from __future__ import annotations

import re

_YUAN = re.compile(r"^(0|[1-9][0-9]*)(?:\.([0-9]{1,2}))?$")


def fen_to_yuan(fen: int) -> str:
    """1999 -> "19.99"; 5 -> "0.05"."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
        raise ValueError(f"amount must be a non-negative integer of fen, got {fen!r}")
    return f"{fen // 100}.{fen % 100:02d}"


def yuan_to_fen(text: str) -> int:
    """ "19.99" -> 1999; "19.9" -> 1990; "19" -> 1900. Raises ValueError on anything else."""
    match = _YUAN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a yuan amount with at most two decimals: {text!r}")
    whole, frac = match.group(1), (match.group(2) or "").ljust(2, "0")
    return int(whole) * 100 + int(frac)
