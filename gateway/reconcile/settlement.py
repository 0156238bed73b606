"""The daily settlement summary per merchant, channel and currency: pure arithmetic over the
day's aggregates. Amounts are integers in minor units.

- count, gross: the payments that succeeded that China day (by `paid_at`), and their sum;
- refunds: the refunds that completed that day (by `completed_at`), whatever day their
  payment was paid, and their sum;
- fees: the channel's fee from the routing file (`routing.fees.fee_for`: percent rounded half
  up per payment, plus the fixed part) on each payment of the day; refunds return no fee;
- net = gross - refunds - fees: what the channel owes the merchant for the day.

A channel that is no longer in the routing file has no fee settings: its fees count as 0 and
the row says `fee_known: false`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from gateway.domain.records import PaymentGroup, RefundGroup
from routing.fees import fee_for
from routing.schema import FeeConfig

__all__ = ["PaymentGroup", "RefundGroup", "Settlement", "SettlementRow", "settle"]


@dataclass(slots=True)
class SettlementRow:
    merchant_id: str
    channel: str
    currency: str
    count: int = 0
    gross: int = 0
    refund_count: int = 0
    refunds: int = 0
    fees: int = 0
    net: int = 0
    fee_known: bool = True


@dataclass(slots=True)
class CurrencyTotals:
    count: int = 0
    gross: int = 0
    refund_count: int = 0
    refunds: int = 0
    fees: int = 0
    net: int = 0


@dataclass(slots=True)
class Settlement:
    day: date
    rows: list[SettlementRow] = field(default_factory=list)
    totals: dict[str, CurrencyTotals] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "timezone": "UTC+8",
            "data": [asdict(row) for row in self.rows],
            "totals": {currency: asdict(t) for currency, t in sorted(self.totals.items())},
        }


def settle(
    day: date,
    payments: Iterable[PaymentGroup],
    refunds: Iterable[RefundGroup],
    fees: Mapping[str, FeeConfig],
) -> Settlement:
    """The day's rows (sorted by merchant, channel, currency) and totals per currency."""
    rows: dict[tuple[str, str, str], SettlementRow] = {}

    def row(merchant_id: str, channel: str, currency: str) -> SettlementRow:
        key = (merchant_id, channel, currency)
        if key not in rows:
            rows[key] = SettlementRow(merchant_id, channel, currency, fee_known=channel in fees)
        return rows[key]

    for group in payments:
        r = row(group.merchant_id, group.channel, group.currency)
        r.count += group.count
        r.gross += group.amount * group.count
        fee = fees.get(group.channel)
        if fee is not None:
            r.fees += fee_for(fee, group.amount) * group.count
    for refund in refunds:
        r = row(refund.merchant_id, refund.channel, refund.currency)
        r.refund_count += refund.count
        r.refunds += refund.amount
    settlement = Settlement(day)
    for key in sorted(rows):
        r = rows[key]
        r.net = r.gross - r.refunds - r.fees
        settlement.rows.append(r)
        t = settlement.totals.setdefault(r.currency, CurrencyTotals())
        t.count += r.count
        t.gross += r.gross
        t.refund_count += r.refund_count
        t.refunds += r.refunds
        t.fees += r.fees
        t.net += r.net
    return settlement
