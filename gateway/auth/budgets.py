"""Request budgets (API.md §1.7), pure: the class a request is counted in, each class's rate and
burst for a merchant (the settings' defaults, or the merchant's overrides), and where a budget
stands after a request (the `RateLimit-*` fields).

A budget is a GCRA (generic cell rate algorithm, a leaky bucket kept as one timestamp):
`per_s` requests a second on average, up to `burst` at once. It is counted in Redis by the
admission script (`gateway.auth.admission`), so every gateway process shares it."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from gateway.domain.errors import Budget
from gateway.domain.records import RateLimitOverrides


class RequestClass(enum.StrEnum):
    """What a request is counted as: each class has a budget of its own."""

    PAYMENTS = "payments"
    """`POST /v1/payments`."""
    REFUNDS = "refunds"
    """`POST /v1/payments/{id}/refunds`."""
    OTHER = "other"
    """Every other `/v1` request, reads included."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_s: float
    burst: int
    """Requests that may come at once, after a quiet time."""

    @property
    def interval_us(self) -> int:
        """The time one request takes from the budget."""
        return max(1, round(1_000_000 / self.per_s))

    def standing(self, remaining: int, reset_us: int) -> Budget:
        """The budget after a request, from the script's figures (microseconds)."""
        return Budget(
            limit=self.burst, remaining=max(0, remaining), reset_s=max(0, math.ceil(reset_us / 1e6))
        )


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """The gateway's default rates (requests per second) and how many seconds' worth of
    requests may come at once."""

    payments_per_s: float
    refunds_per_s: float
    other_per_s: float
    burst_s: float

    def rate_limit(self, request_class: RequestClass, overrides: RateLimitOverrides) -> RateLimit:
        """The budget of `request_class` for a merchant with these overrides."""
        name = f"{request_class.value}_per_s"
        own: float | None = getattr(overrides, name)
        per_s: float = own if own is not None else getattr(self, name)
        return RateLimit(per_s, burst=max(1, math.floor(per_s * self.burst_s)))


def failure_limit(failures: int, window_s: float) -> RateLimit:
    """The budget of failed authentications of one source address: `failures` at once, then
    `failures` per `window_s` (one every `window_s / failures`)."""
    return RateLimit(failures / window_s, burst=failures)


def retry_after_s(wait_us: int) -> int:
    """Whole seconds for Retry-After: at least 1, so that a retry does not come too soon."""
    return max(1, math.ceil(wait_us / 1e6))
