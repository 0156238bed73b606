"""Matching a payment against a rule's `when:` condition.

`mismatch` says why a condition does not hold (for `routes explain`); `matches` is its yes/no.
Pure: the payment's time comes in the facts, never from the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from routing.schema import DAYS, Condition, TimeCondition, zone


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """What routing knows about a payment. `now` should be timezone-aware (a naive value is
    taken as UTC); time windows are evaluated in their own timezone."""

    method: str
    amount: int
    currency: str
    merchant_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def matches(cond: Condition | None, facts: PaymentFacts) -> bool:
    return mismatch(cond, facts) is None


def mismatch(cond: Condition | None, facts: PaymentFacts) -> str | None:
    """None when `cond` holds for the payment, else a short reason it does not."""
    if cond is None:
        return None
    if cond.method is not None and facts.method not in cond.method:
        return f"method {facts.method} not in {_list(cond.method)}"
    if cond.currency is not None and facts.currency not in cond.currency:
        return f"currency {facts.currency} not in {_list(cond.currency)}"
    if cond.amount is not None:
        low, high = cond.amount.min, cond.amount.max
        if low is not None and facts.amount < low:
            return f"amount {facts.amount} below {low}"
        if high is not None and facts.amount > high:
            return f"amount {facts.amount} above {high}"
    if cond.merchant is not None and facts.merchant_id not in cond.merchant:
        return f"merchant {facts.merchant_id or '-'} not in {_list(cond.merchant)}"
    if cond.metadata is not None:
        for key, values in cond.metadata.items():
            got = facts.metadata.get(key)
            if got not in values:
                shown = "missing" if got is None else repr(got)
                return f"metadata {key} {shown} not in {_list(values)}"
    if cond.time is not None:
        reason = time_mismatch(cond.time, facts.now)
        if reason is not None:
            return reason
    for index, part in enumerate(cond.all_ or ()):
        reason = mismatch(part, facts)
        if reason is not None:
            return f"all[{index}]: {reason}"
    if cond.any_ is not None:
        reasons = [mismatch(part, facts) for part in cond.any_]
        if all(reason is not None for reason in reasons):
            return "any: none matched (" + "; ".join(r for r in reasons if r) + ")"
    if cond.not_ is not None and mismatch(cond.not_, facts) is None:
        return "not: the excluded condition matched"
    return None


def time_mismatch(cond: TimeCondition, now: datetime) -> str | None:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    local = now.astimezone(zone(cond.timezone))
    minute = local.hour * 60 + local.minute
    weekday = local.weekday()
    for window in cond.window:
        if window.crosses_midnight:
            inside = minute >= window.start or minute < window.end
            # the small hours belong to the night that started the day before
            start_day = (weekday - 1) % 7 if minute < window.end else weekday
        else:
            inside = window.start <= minute < window.end
            start_day = weekday
        if inside and (cond.days is None or DAYS[start_day] in cond.days):
            return None
    windows = ", ".join(str(w) for w in cond.window)
    days = f" on {','.join(cond.days)}" if cond.days is not None else ""
    return f"time {local:%a %H:%M} {cond.timezone} outside {windows}{days}"


def _list(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"
