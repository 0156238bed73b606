"""China time (UTC+8, no daylight saving), the clock of every channel here: the times they put on
the wire and the days their statements are cut by. Defined once for adapters and simulators."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
"""UTC+8. A fixed offset is exact: China has not observed daylight saving time since 1991."""


def china_now(clock: Callable[[], datetime] | None = None) -> datetime:
    """Now (or `clock()`, an aware datetime) in China time."""
    return (clock() if clock else datetime.now(UTC)).astimezone(CHINA_TZ)


def china_date(moment: datetime) -> date:
    """The China calendar day of an aware moment: the day a channel's statement files it under."""
    return moment.astimezone(CHINA_TZ).date()


def china_midnight(day: date) -> datetime:
    """The first moment of a China calendar day."""
    return datetime(day.year, day.month, day.day, tzinfo=CHINA_TZ)


def to_rfc3339(moment: datetime) -> str:
    """An aware moment as RFC 3339 in China time, to the second: `2024-05-01T12:00:00+08:00`
    (how the bank and WeChat Pay write times). Raises ValueError for a naive one."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime")
    return moment.astimezone(CHINA_TZ).replace(microsecond=0).isoformat()


def from_rfc3339(text: str) -> datetime:
    """An RFC 3339 time as an aware datetime, in the offset it carries. Raises ValueError,
    also for a time without an offset (whose moment nobody could tell)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without an offset: {text!r}")
    return moment
