"""Fees: integer maths, half up to the fen."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.fees import fee_for, percent_units
from routing.schema import MAX_AMOUNT, FeeConfig


@pytest.mark.parametrize(
    ("percent", "fixed", "amount", "fee"),
    [
        ("0.6", 0, 1999, 12),  # 11.994
        ("0.6", 0, 1, 0),  # 0.006
        ("0.5", 0, 100, 1),  # 0.5 -> half up
        ("0.5", 0, 99, 0),  # 0.495
        ("0.125", 0, 400, 1),  # 0.5
        ("0.125", 0, 1200, 2),  # 1.5
        ("0.0001", 0, MAX_AMOUNT, 100_000),
        ("100", 0, 12345, 12345),
        ("0", 30, 12345, 30),
        ("0.38", 10, 10_000, 48),
        ("2.9999", 0, MAX_AMOUNT, 2_999_900_000),
    ],
)
def test_examples(percent: str, fixed: int, amount: int, fee: int) -> None:
    assert fee_for(FeeConfig(percent=Decimal(percent), fixed=fixed), amount) == fee


def test_refuses_bad_amounts_and_percentages() -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        fee_for(FeeConfig(), -1)
    with pytest.raises(ValueError, match="non-negative integer"):
        fee_for(FeeConfig(), 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4 decimal places"):
        percent_units(Decimal("0.00001"))
    assert percent_units(Decimal("0.6")) == 6000
    assert percent_units(3) == 30000


percents = st.integers(min_value=0, max_value=1_000_000).map(lambda u: Decimal(u) / 10_000)
amounts = st.integers(min_value=0, max_value=MAX_AMOUNT)


@settings(database=None)
@given(percent=percents, fixed=st.integers(0, 10_000), amount=amounts)
def test_fee_is_the_exact_half_up_integer(percent: Decimal, fixed: int, amount: int) -> None:
    fee = fee_for(FeeConfig(percent=percent, fixed=fixed), amount)
    assert type(fee) is int
    exact = Fraction(amount) * Fraction(percent) / 100
    assert fee - fixed == math.floor(exact + Fraction(1, 2))
    assert abs(Fraction(fee - fixed) - exact) <= Fraction(1, 2)


@settings(database=None)
@given(percent=percents, amount=amounts, more=st.integers(0, 10**6))
def test_fee_never_decreases_with_the_amount(percent: Decimal, amount: int, more: int) -> None:
    fee = FeeConfig(percent=percent)
    assert fee_for(fee, amount) <= fee_for(fee, amount + more)
