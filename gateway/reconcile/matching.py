"""Matching a channel's daily statement against our records: pure logic, no I/O.

Our side of one channel and one China (UTC+8) day is loaded into an `OurSide`: succeeded
payments keyed by the channel's order id, succeeded refunds keyed by the channel's refund id
(measured: ~355 bytes a record, 35.5 MiB for 100,000 payments and 5,000 refunds; see
tests/bench/reconcile_bench.py). The statement is then fed one line at a time
(`Matcher.feed`), so it is never held whole:

- a line whose key is in our day gives `matched`, `amount_mismatch` or `status_mismatch`;
- a line whose key is not in our day is *deferred*: the caller looks those keys up among all
  our records (any day, any status, any channel) a batch at a time and hands them to
  `Matcher.resolve`, which gives `missing_ours` (we never had it), a mismatch or `matched` (we
  have it on another day, or in another state), or skips it when it belongs to another of our
  channels that shares this statement (two channel names on one merchant account);
- `Matcher.finish` gives `missing_channel` for every record of our day the statement lacked.

A status mismatch wins over an amount mismatch (the amount of a line in the wrong state says
little). A key that appears twice on the statement gives `missing_ours` for the second line.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from adapters.base import StatementKind, StatementLine

CHINA_TZ = timezone(timedelta(hours=8), "UTC+8")
"""The channels cut their statements by the China day; so does our side."""


class Outcome(enum.StrEnum):
    MATCHED = "matched"
    MISSING_OURS = "missing_ours"
    """On the statement, not at our side."""
    MISSING_CHANNEL = "missing_channel"
    """Ours succeeded that day, not on the statement."""
    AMOUNT_MISMATCH = "amount_mismatch"
    STATUS_MISMATCH = "status_mismatch"


def china_day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a China day, as aware datetimes."""
    start = datetime.combine(day, time.min, CHINA_TZ)
    return start, start + timedelta(days=1)


def china_day_of(moment: datetime) -> date:
    return moment.astimezone(CHINA_TZ).date()


# ---- statuses -------------------------------------------------------------------------------

_STATUS_WORDS: dict[str, str] = {
    **dict.fromkeys(
        ("succeeded", "success", "trade_success", "trade_finished", "refund_success"), "succeeded"
    ),
    **dict.fromkeys(
        ("pending", "processing", "notpay", "userpaying", "wait_buyer_pay", "waiting",
         "creating", "unknown"),
        "pending",
    ),
    **dict.fromkeys(("failed", "fail", "payerror", "abnormal", "refund_fail"), "failed"),
    **dict.fromkeys(
        ("closed", "trade_closed", "revoked", "cancelled", "canceled", "failed_over"), "closed"
    ),
}  # fmt: skip


def normalize_status(status: str) -> str:
    """A channel's (or an attempt's) status in our four words: succeeded, pending, failed,
    closed. A word we do not know is kept, lowered, and so never equals ours."""
    word = status.strip().lower()
    return _STATUS_WORDS.get(word, word)


# ---- our side -------------------------------------------------------------------------------


@dataclass(slots=True)
class OurRecord:
    """One of our payments (as one channel order) or refunds, as reconciliation sees it."""

    kind: StatementKind
    channel: str
    channel_order_id: str
    amount: int
    status: str
    """Ours, in the words of `normalize_status`."""
    merchant_id: str
    payment_id: str
    refund_id: str | None = None
    channel_refund_id: str | None = None
    booked_at: datetime | None = None
    """When we dated it (paid_at, completed_at); only kept for records looked up by key."""
    seen: bool = False

    @property
    def key(self) -> str:
        if self.kind is StatementKind.REFUND:
            return self.channel_refund_id or ""
        return self.channel_order_id


def line_key(line: StatementLine) -> str:
    if line.kind is StatementKind.REFUND:
        return line.channel_refund_id or ""
    return line.channel_order_id


@dataclass(slots=True)
class OurSide:
    """Our records of one channel and one day, keyed as the statement keys its lines."""

    payments: dict[str, OurRecord] = field(default_factory=dict)
    refunds: dict[str, OurRecord] = field(default_factory=dict)

    def add(self, record: OurRecord) -> None:
        # interned: a day has few merchants and four statuses, but 100,000 rows
        record.merchant_id = sys.intern(record.merchant_id)
        record.status = sys.intern(record.status)
        self._table(record.kind)[record.key] = record

    def get(self, kind: StatementKind, key: str) -> OurRecord | None:
        return self._table(kind).get(key)

    def _table(self, kind: StatementKind) -> dict[str, OurRecord]:
        return self.refunds if kind is StatementKind.REFUND else self.payments

    def __len__(self) -> int:
        return len(self.payments) + len(self.refunds)

    def unseen(self) -> Iterator[OurRecord]:
        for table in (self.payments, self.refunds):
            for record in table.values():
                if not record.seen:
                    yield record


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchResult:
    outcome: Outcome
    kind: StatementKind
    channel_order_id: str
    channel_refund_id: str | None
    payment_id: str | None
    refund_id: str | None
    merchant_id: str | None
    our_amount: int | None
    their_amount: int | None
    our_status: str | None
    their_status: str | None
    channel_trade_no: str | None = None
    note: str | None = None


def classify(
    line: StatementLine | None, ours: OurRecord | None, note: str | None = None
) -> MatchResult:
    """The outcome of one statement line against one of our records (either may be absent,
    not both)."""
    if line is None:
        if ours is None:
            raise ValueError("classify needs a statement line or one of our records")
        return _result(Outcome.MISSING_CHANNEL, None, ours, note)
    if ours is None:
        return _result(Outcome.MISSING_OURS, line, None, note)
    if normalize_status(line.status) != ours.status:
        outcome = Outcome.STATUS_MISMATCH
    elif line.amount != ours.amount:
        outcome = Outcome.AMOUNT_MISMATCH
    else:
        outcome = Outcome.MATCHED
    return _result(outcome, line, ours, note)


def _result(
    outcome: Outcome, line: StatementLine | None, ours: OurRecord | None, note: str | None
) -> MatchResult:
    source: StatementLine | OurRecord | None = line if line is not None else ours
    assert source is not None, "a result has a statement line, a record of ours, or both"
    return MatchResult(
        outcome=outcome,
        kind=source.kind,
        channel_order_id=source.channel_order_id,
        channel_refund_id=source.channel_refund_id,
        payment_id=ours.payment_id if ours else None,
        refund_id=ours.refund_id if ours else None,
        merchant_id=ours.merchant_id if ours else None,
        our_amount=ours.amount if ours else None,
        their_amount=line.amount if line else None,
        our_status=ours.status if ours else None,
        their_status=line.status if line else None,
        channel_trade_no=line.channel_trade_no if line else None,
        note=note,
    )


@dataclass(slots=True)
class OutcomeTotals:
    count: int = 0
    our_amount: int = 0
    their_amount: int = 0


@dataclass(slots=True)
class Summary:
    """Counts and amounts per outcome (minor units), built as results stream by."""

    statement_lines: int = 0
    our_records: int = 0
    other_channel: int = 0
    """Statement lines that belong to another of our channels sharing this statement."""
    outcomes: dict[Outcome, OutcomeTotals] = field(
        default_factory=lambda: {o: OutcomeTotals() for o in Outcome}
    )

    def add(self, result: MatchResult) -> None:
        totals = self.outcomes[result.outcome]
        totals.count += 1
        totals.our_amount += result.our_amount or 0
        totals.their_amount += result.their_amount or 0

    def count(self, outcome: Outcome) -> int:
        return self.outcomes[outcome].count

    @property
    def discrepancies(self) -> int:
        return sum(t.count for o, t in self.outcomes.items() if o is not Outcome.MATCHED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "statement_lines": self.statement_lines,
            "our_records": self.our_records,
            "other_channel": self.other_channel,
            "outcomes": {o.value: asdict(t) for o, t in self.outcomes.items()},
        }


# ---- the matcher ----------------------------------------------------------------------------


class Matcher:
    """Streams one statement against `OurSide` (see the module's docstring)."""

    def __init__(self, channel: str, day: date, ours: OurSide) -> None:
        self.channel = channel
        self.day = day
        self.ours = ours
        self.summary = Summary(our_records=len(ours))
        self.deferred: list[StatementLine] = []
        self._resolved: set[tuple[StatementKind, str]] = set()

    def feed(self, line: StatementLine) -> MatchResult | None:
        """The result of one line, or None when it is deferred (see `resolve`)."""
        self.summary.statement_lines += 1
        record = self.ours.get(line.kind, line_key(line))
        if record is None:
            self.deferred.append(line)
            return None
        if record.seen:
            return self._add(classify(line, None, "the statement lists this key twice"))
        record.seen = True
        return self._add(classify(line, record))

    def deferred_keys(self) -> tuple[list[str], list[str]]:
        """(channel order ids, channel refund ids) of the deferred lines, to look up."""
        orders = [line_key(x) for x in self.deferred if x.kind is StatementKind.PAYMENT]
        refunds = [line_key(x) for x in self.deferred if x.kind is StatementKind.REFUND]
        return orders, refunds

    def resolve(self, found: Iterable[OurRecord]) -> list[MatchResult]:
        """Classify the deferred lines against what a look-up by their keys found (any day,
        any status, any of our channels), and clear them."""
        by_key = {(r.kind, r.key): r for r in found}
        results = []
        for line in self.deferred:
            key = (line.kind, line_key(line))
            record = by_key.get(key)
            if record is not None and record.channel != self.channel:
                self.summary.other_channel += 1
                continue
            if key in self._resolved:
                results.append(
                    self._add(classify(line, None, "the statement lists this key twice"))
                )
                continue
            self._resolved.add(key)
            note = None
            if record is not None and record.booked_at is not None:
                booked = china_day_of(record.booked_at)
                if booked != self.day:
                    note = f"ours is dated {booked.isoformat()} (China time)"
            results.append(self._add(classify(line, record, note)))
        self.deferred.clear()
        return results

    def finish(self) -> Iterator[MatchResult]:
        """`missing_channel` for every record of our day the statement did not list. Call
        after the last `resolve`."""
        if self.deferred:
            raise RuntimeError("resolve the deferred lines before finishing")
        for record in self.ours.unseen():
            yield self._add(classify(None, record))

    def _add(self, result: MatchResult) -> MatchResult:
        self.summary.add(result)
        return result


def match_statement(
    channel: str,
    day: date,
    ours: OurSide,
    statement: Iterable[StatementLine],
    lookup: Mapping[tuple[StatementKind, str], OurRecord] | None = None,
) -> tuple[list[MatchResult], Summary]:
    """The whole match in one call, over an in-memory statement and an optional look-up table
    for lines outside our day (tests and small statements; the service streams)."""
    matcher = Matcher(channel, day, ours)
    results = [r for r in map(matcher.feed, statement) if r is not None]
    if matcher.deferred:
        table = lookup or {}
        found = [
            table[(x.kind, line_key(x))] for x in matcher.deferred if (x.kind, line_key(x)) in table
        ]
        results.extend(matcher.resolve(found))
    results.extend(matcher.finish())
    return results, matcher.summary
