"""Time spent waiting on channels during the current request, so the gateway can report its own
overhead (total minus channel time) in `X-Gateway-Overhead-Ms`."""

from __future__ import annotations

from contextvars import ContextVar

_channel_seconds: ContextVar[list[float] | None] = ContextVar("channel_seconds", default=None)


def start() -> None:
    _channel_seconds.set([0.0])


def add_channel_time(seconds: float) -> None:
    acc = _channel_seconds.get()
    if acc is not None:
        acc[0] += seconds


def channel_time() -> float:
    acc = _channel_seconds.get()
    return acc[0] if acc is not None else 0.0
