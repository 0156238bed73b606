"""A channel's fee for one payment, in integer minor units. No floats anywhere."""

from __future__ import annotations

from decimal import Decimal

from routing.schema import FeeConfig

_SCALE = 10_000  # percent carries at most four decimals: 0.6% -> 6000 units of 1e-4 %
_DENOMINATOR = 100 * _SCALE


def percent_units(percent: Decimal | int) -> int:
    """A percentage with at most four decimals as an integer count of 0.0001 %."""
    units = Decimal(percent) * _SCALE
    if units != units.to_integral_value():
        raise ValueError(f"fee percent {percent} has more than 4 decimal places")
    return int(units)


def fee_for(fee: FeeConfig, amount: int) -> int:
    """`percent` of `amount`, rounded half up to the minor unit, plus `fixed`.

    >>> fee_for(FeeConfig(percent=Decimal("0.6")), 1999)   # 11.994 -> 12
    12
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError(f"amount must be a non-negative integer, got {amount!r}")
    numerator = amount * percent_units(fee.percent)
    return (numerator + _DENOMINATOR // 2) // _DENOMINATOR + fee.fixed
