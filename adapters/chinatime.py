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
