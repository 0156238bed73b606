"""Statement matching and settlement arithmetic, from pure data."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.base import StatementKind, StatementLine
from gateway.reconcile.matching import (
    Matcher,
    OurRecord,
    OurSide,
    Outcome,
    china_day_bounds,
    china_day_of,
    classify,
    match_statement,
    normalize_status,
)
from gateway.reconcile.settlement import PaymentGroup, RefundGroup, settle
from routing.schema import FeeConfig

DAY = date(2024, 5, 1)
CH = "bank_icbc"


def pay(order: str, amount: int = 1000, status: str = "succeeded", **kw: object) -> OurRecord:
    return OurRecord(
        kind=StatementKind.PAYMENT,
        channel=str(kw.pop("channel", CH)),
        channel_order_id=order,
        amount=amount,
        status=status,
        merchant_id="mch_1",
        payment_id=f"pay_{order}",
        **kw,  # type: ignore[arg-type]
    )


def refund(ref: str, order: str, amount: int = 300, status: str = "succeeded") -> OurRecord:
    return OurRecord(
        kind=StatementKind.REFUND,
        channel=CH,
        channel_order_id=order,
        amount=amount,
        status=status,
        merchant_id="mch_1",
        payment_id=f"pay_{order}",
        refund_id=f"re_{ref}",
        channel_refund_id=ref,
    )


def line(order: str, amount: int = 1000, status: str = "succeeded") -> StatementLine:
    return StatementLine(StatementKind.PAYMENT, order, f"T{order}", amount, status)


def rline(ref: str, order: str, amount: int = 300, status: str = "success") -> StatementLine:
    return StatementLine(StatementKind.REFUND, order, f"R{ref}", amount, status, ref)


def side(*records: OurRecord) -> OurSide:
    ours = OurSide()
    for r in records:
        ours.add(r)
    return ours


def outcomes(results: list) -> dict[str, Outcome]:  # type: ignore[type-arg]
    return {r.channel_refund_id or r.channel_order_id: r.outcome for r in results}


def test_each_outcome_from_pure_data() -> None:
    ours = side(
        pay("A"),  # matched
        pay("B"),  # the channel reports another amount
        pay("C"),  # the channel reports it failed
        pay("D"),  # not on the statement
        refund("RA", "A"),  # matched, the channel's "success" is our "succeeded"
    )
    statement = [
        line("A"),
        line("B", amount=999),
        line("C", status="failed"),
        line("X", amount=500),  # not ours at all
        rline("RA", "A"),
    ]
    results, summary = match_statement(CH, DAY, ours, statement)
    assert outcomes(results) == {
        "A": Outcome.MATCHED,
        "B": Outcome.AMOUNT_MISMATCH,
        "C": Outcome.STATUS_MISMATCH,
        "D": Outcome.MISSING_CHANNEL,
        "X": Outcome.MISSING_OURS,
        "RA": Outcome.MATCHED,
    }
    by_key = {r.channel_refund_id or r.channel_order_id: r for r in results}
    assert (by_key["B"].our_amount, by_key["B"].their_amount) == (1000, 999)
    assert (by_key["C"].our_status, by_key["C"].their_status) == ("succeeded", "failed")
    assert by_key["D"].their_amount is None and by_key["D"].payment_id == "pay_D"
    assert by_key["X"].our_amount is None and by_key["X"].payment_id is None
    assert by_key["RA"].refund_id == "re_RA" and by_key["RA"].channel_order_id == "A"
    assert summary.statement_lines == 5 and summary.our_records == 5
    assert {o: summary.count(o) for o in Outcome} == {
        Outcome.MATCHED: 2,
        Outcome.MISSING_OURS: 1,
        Outcome.MISSING_CHANNEL: 1,
        Outcome.AMOUNT_MISMATCH: 1,
        Outcome.STATUS_MISMATCH: 1,
    }
    assert summary.discrepancies == 4
    amounts = summary.as_dict()["outcomes"]
    assert amounts["matched"] == {"count": 2, "our_amount": 1300, "their_amount": 1300}
    assert amounts["amount_mismatch"] == {"count": 1, "our_amount": 1000, "their_amount": 999}
    assert amounts["missing_ours"] == {"count": 1, "our_amount": 0, "their_amount": 500}
    assert amounts["missing_channel"] == {"count": 1, "our_amount": 1000, "their_amount": 0}


def test_status_mismatch_wins_over_amount_mismatch() -> None:
    result = classify(line("A", amount=1, status="closed"), pay("A"))
    assert result.outcome is Outcome.STATUS_MISMATCH
    assert (result.our_amount, result.their_amount) == (1000, 1)


def test_refunds_and_payments_are_keyed_apart() -> None:
    """A refund line is matched by the channel's refund id, not by its order id."""
    ours = side(pay("A"), refund("R1", "A", 100), refund("R2", "A", 200))
    results, _ = match_statement(
        CH, DAY, ours, [rline("R2", "A", 200), line("A"), rline("R3", "A", 50)]
    )
    assert outcomes(results) == {
        "R2": Outcome.MATCHED,
        "A": Outcome.MATCHED,
        "R3": Outcome.MISSING_OURS,
        "R1": Outcome.MISSING_CHANNEL,
    }


def test_a_key_listed_twice_is_missing_ours_the_second_time() -> None:
    results, _ = match_statement(CH, DAY, side(pay("A")), [line("A"), line("A")])
    assert [r.outcome for r in results] == [Outcome.MATCHED, Outcome.MISSING_OURS]
    assert results[1].note and "twice" in results[1].note
    # the same for a key outside our day, found by the look-up
    other = pay("Z", booked_at=datetime(2024, 4, 30, 3, tzinfo=UTC))
    results, _ = match_statement(
        CH, DAY, side(), [line("Z"), line("Z")], {(StatementKind.PAYMENT, "Z"): other}
    )
    assert [r.outcome for r in results] == [Outcome.MATCHED, Outcome.MISSING_OURS]


def test_lines_outside_our_day_are_resolved_by_lookup() -> None:
    lookup = {
        # paid on another China day: matched, with a note
        (StatementKind.PAYMENT, "P"): pay("P", booked_at=datetime(2024, 4, 30, 15, tzinfo=UTC)),
        # closed at our side, paid at the channel (a late payment)
        (StatementKind.PAYMENT, "L"): pay("L", status="closed"),
        # still pending at our side (a dropped notification not synced yet)
        (StatementKind.PAYMENT, "W"): pay("W", status="pending"),
        # another of our channels that shares this statement: skipped
        (StatementKind.PAYMENT, "S"): pay("S", channel="bank_cmb"),
        # a refund still pending at our side, processing at the channel
        (StatementKind.REFUND, "RP"): refund("RP", "P", status="pending"),
    }
    statement = [
        line("P"),
        line("L"),
        line("W"),
        line("S"),
        rline("RP", "P", status="processing"),
        line("N"),
    ]
    results, summary = match_statement(CH, DAY, side(), statement, lookup)
    assert outcomes(results) == {
        "P": Outcome.MATCHED,
        "L": Outcome.STATUS_MISMATCH,
        "W": Outcome.STATUS_MISMATCH,
        "RP": Outcome.MATCHED,
        "N": Outcome.MISSING_OURS,
    }
    assert summary.other_channel == 1 and summary.statement_lines == 6
    note = next(r.note for r in results if r.channel_order_id == "P" and r.kind == "payment")
    # 2024-04-30 15:00 UTC is 23:00 on the 30th in China
    assert note == "ours is dated 2024-04-30 (China time)"


def test_the_statement_is_consumed_as_a_stream() -> None:
    """Results come out while the statement is still being read; only lines outside our day
    wait for a look-up."""
    n = 10_000
    ours = side(*(pay(f"O{i}") for i in range(n)))
    matcher = Matcher(CH, DAY, ours)
    read = 0

    def statement() -> Iterator[StatementLine]:
        nonlocal read
        for i in range(n):
            read += 1
            yield line(f"O{i}")

    for count, ln in enumerate(statement(), start=1):
        result = matcher.feed(ln)
        assert result is not None and result.outcome is Outcome.MATCHED
        assert read == count  # nothing read ahead
    assert matcher.deferred == []
    assert list(matcher.finish()) == []
    assert matcher.summary.count(Outcome.MATCHED) == n


def test_finish_refuses_unresolved_lines() -> None:
    matcher = Matcher(CH, DAY, side())
    assert matcher.feed(line("X")) is None
    assert matcher.deferred_keys() == (["X"], [])
    with pytest.raises(RuntimeError):
        list(matcher.finish())
    assert [r.outcome for r in matcher.resolve([])] == [Outcome.MISSING_OURS]
    assert list(matcher.finish()) == []


def test_statuses_in_the_channels_words() -> None:
    assert normalize_status("SUCCESS") == "succeeded"
    assert normalize_status("succeeded") == "succeeded"
    assert normalize_status("processing") == "pending"
    assert normalize_status("waiting") == "pending"  # an attempt's status
    assert normalize_status("REVOKED") == "closed"
    assert normalize_status("failed_over") == "closed"
    assert normalize_status("payerror") == "failed"
    assert normalize_status("交易") == "交易"  # unknown words are kept, so they never match


def test_china_day() -> None:
    start, end = china_day_bounds(DAY)
    assert start == datetime(2024, 4, 30, 16, tzinfo=UTC)
    assert end == datetime(2024, 5, 1, 16, tzinfo=UTC)
    assert china_day_of(datetime(2024, 4, 30, 16, tzinfo=UTC)) == DAY
    assert china_day_of(datetime(2024, 4, 30, 15, 59, 59, tzinfo=UTC)) == date(2024, 4, 30)


@settings(max_examples=200, deadline=None)
@given(
    ours_amounts=st.dictionaries(st.integers(0, 40), st.integers(1, 10**6), max_size=30),
    theirs=st.lists(
        st.tuples(st.integers(0, 60), st.integers(1, 10**6), st.sampled_from(["success", "fail"])),
        max_size=40,
    ),
)
def test_every_line_and_every_record_is_accounted_for(
    ours_amounts: dict[int, int], theirs: list[tuple[int, int, str]]
) -> None:
    ours = side(*(pay(str(k), amount) for k, amount in ours_amounts.items()))
    statement = [line(str(k), amount, status) for k, amount, status in theirs]
    results, summary = match_statement(CH, DAY, ours, statement)
    compared = (
        summary.count(Outcome.MATCHED)
        + summary.count(Outcome.AMOUNT_MISMATCH)
        + summary.count(Outcome.STATUS_MISMATCH)
    )
    # each statement line gives one result; each record of ours is compared or missing once
    assert compared + summary.count(Outcome.MISSING_OURS) == len(statement)
    assert compared + summary.count(Outcome.MISSING_CHANNEL) == len(ours_amounts)
    assert len(results) == len(statement) + summary.count(Outcome.MISSING_CHANNEL)
    for r in results:
        if r.outcome is Outcome.MATCHED:
            assert r.our_amount == r.their_amount
            assert r.their_status == "success"


# ---- settlement -----------------------------------------------------------------------------


def test_settlement_fees_refunds_and_net() -> None:
    fees = {
        "bank_icbc": FeeConfig(percent=Decimal("0.55")),
        "bank_cmb": FeeConfig(percent=Decimal("0.45"), fixed=10),
    }
    result = settle(
        DAY,
        [
            PaymentGroup("mch_1", "bank_icbc", "CNY", 1999, 3),  # fee 10.9945 -> 11 each
            PaymentGroup("mch_1", "bank_icbc", "CNY", 100, 1),  # fee 0.55 -> 1
            PaymentGroup("mch_1", "bank_cmb", "CNY", 10000, 2),  # fee 45 + 10 each
            PaymentGroup("mch_2", "old_channel", "CNY", 500, 1),  # no fee settings
            PaymentGroup("mch_2", "bank_icbc", "USD", 1000, 1),  # fee 5.5 -> 6
        ],
        [
            RefundGroup("mch_1", "bank_icbc", "CNY", 2, 700),
            RefundGroup("mch_3", "bank_cmb", "CNY", 1, 50),  # a refund of an older payment
        ],
        fees,
    )
    rows = {(r.merchant_id, r.channel, r.currency): r for r in result.rows}
    icbc = rows[("mch_1", "bank_icbc", "CNY")]
    assert (icbc.count, icbc.gross, icbc.refund_count, icbc.refunds, icbc.fees) == (
        4,
        5997 + 100,
        2,
        700,
        33 + 1,
    )
    assert icbc.net == 6097 - 700 - 34
    cmb = rows[("mch_1", "bank_cmb", "CNY")]
    assert (cmb.gross, cmb.fees, cmb.net) == (20000, 110, 19890)
    old = rows[("mch_2", "old_channel", "CNY")]
    assert old.fee_known is False and old.fees == 0 and old.net == 500
    refund_only = rows[("mch_3", "bank_cmb", "CNY")]
    assert (refund_only.count, refund_only.gross, refund_only.net) == (0, 0, -50)
    assert rows[("mch_2", "bank_icbc", "USD")].fees == 6
    assert [(r.merchant_id, r.channel) for r in result.rows] == sorted(
        (r.merchant_id, r.channel) for r in result.rows
    )
    as_dict = result.as_dict()
    assert as_dict["date"] == "2024-05-01"
    assert as_dict["totals"]["CNY"] == {
        "count": 7,
        "gross": 6097 + 20000 + 500,
        "refund_count": 3,
        "refunds": 750,
        "fees": 34 + 110,
        "net": 6097 + 20000 + 500 - 750 - 144,
    }
    assert as_dict["totals"]["USD"]["net"] == 994
