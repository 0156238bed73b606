"""One call to a channel: its attempts, its deadline, and the rule on what it came to.

A channel package hands `Kernel.exchange` a function that makes ONE signed attempt (`attempt`:
send, verify, parse) and says what the answer was: an `Answer`, a `Busy` answer (its results
table says "nothing settled, ask again with the same parameters"), or `AttemptFailed` (see
`adapters.kernel.transport`). The kernel decides everything else, the same way for every
channel:

- the deadline: one budget for the call; every attempt gets what is left (or, when the channel
  config sets ``attempt_timeout_ms`` and another attempt may follow, at most that);
- the retries (tenacity: exponential backoff with full jitter, ``max_attempts``, never a wait
  past the deadline): a failure that cannot have reached the channel and may go differently
  next time (a refused connection, a 429) is tried again; one that may have reached it (a
  timeout, a dropped connection, an unsigned 5xx) only for a call the channel declares safe to
  repeat (`ChannelRules.repeatable`); a busy answer on such a call, unless it is a create (a
  create fails over at once instead: another channel may take the payment now); a bad
  signature or a bad answer never (it would not change);
- whether the channel may have acted, over all the attempts of the call;
- THE rule (`Kernel.settle`): when the channel may have acted during any attempt of a call that
  creates something (a payment, a refund), the result is UNKNOWN, to be queried later, never
  SYSTEM_ERROR or FAILOVER, whatever the last attempt said. And only a create fails over:
  once an order exists a payment stays at its channel.

`Kernel.result` turns what the exchange came to into the `ChannelResult`: an answer through
the channel's own mapping (its results table), a failure through `failure_result` with the
channel's code for it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_full_jitter,
)
from tenacity.stop import stop_base

from adapters.base import ChannelResult, Decision, Outcome
from adapters.kernel.config import ChannelConfig
from adapters.kernel.transport import AttemptFailed, Failure, classify, describe, status_failure

log = structlog.get_logger("adapters.kernel")

T = TypeVar("T")

MIN_ATTEMPT_S = 0.05
"""No attempt is started with less of the budget left than this."""
BACKOFF_CAP_FACTOR = 10
"""The wait before a retry is at most this many times ``retry_backoff_ms``."""


class Call(enum.StrEnum):
    """The calls an adapter makes, in the interface's words (`adapters.base.ChannelAdapter`)."""

    CREATE = "create"
    QUERY = "query"
    CLOSE = "close"
    REFUND = "refund"
    REFUND_QUERY = "refund_query"
    STATEMENT = "statement"

    @property
    def creates(self) -> bool:
        """A payment or a refund: the calls THE rule is about."""
        return self in (Call.CREATE, Call.REFUND)

    @property
    def changes(self) -> bool:
        """Whether the call asks the channel to do something (not only to tell)."""
        return self in (Call.CREATE, Call.REFUND, Call.CLOSE)


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """What the kernel asks of a channel, answered as data in its protocol."""

    repeatable: frozenset[Call]
    """Calls safe to send again after an attempt that may have acted: the channel keeps one
    object per id and answers a repeat with it (or the call changes nothing)."""
    failure_codes: Mapping[Failure, str]
    """The channel_code a result carries for each failure (every Failure has one)."""
    errors_before_processing: bool = False
    """True when the channel's protocol answers everything that reached its logic with HTTP
    200, so that an unsigned 5xx comes from in front of it (`transport.status_failure`)."""

    def __post_init__(self) -> None:
        missing = set(Failure) - set(self.failure_codes)
        if missing:
            raise ValueError(f"no channel code for {sorted(missing)}")


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """What the channel answered, verified and parsed."""

    value: T


@dataclass(frozen=True, slots=True)
class Busy(Generic[T]):
    """An answer the channel's results table reads as "nothing settled, ask again with the same
    parameters" (a system error, rate limit, busy code). Retried where the call allows; when
    the retries end, `value` is mapped like any answer."""

    value: T
    may_have_acted: bool = False
    """Whether the table says the call may have acted all the same (WeChat's SYSTEM_ERROR to
    a refund)."""


Attempt = Callable[[float], Awaitable[Answer[T] | Busy[T]]]
"""One attempt, given the seconds it may take; raises AttemptFailed when it got no answer."""


@dataclass(frozen=True, slots=True)
class Exchanged(Generic[T]):
    """What the attempts of one call came to."""

    answer: T | None
    """The last attempt's answer, when it got one."""
    failure: AttemptFailed | None
    """How the last attempt failed, when it got no answer."""
    may_have_acted: bool
    """Whether any attempt may have reached the channel and acted."""
    attempts: int
    """How many attempts were made."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The settings of `ChannelConfig` the kernel applies, in seconds."""

    budget_s: float
    max_attempts: int
    backoff_s: float
    attempt_timeout_s: float | None = None

    @classmethod
    def of(cls, config: ChannelConfig) -> RetryPolicy:
        return cls(
            budget_s=config.timeout_ms / 1000,
            max_attempts=config.max_attempts,
            backoff_s=config.retry_backoff_ms / 1000,
            attempt_timeout_s=(
                config.attempt_timeout_ms / 1000 if config.attempt_timeout_ms else None
            ),
        )


@dataclass(frozen=True, slots=True)
class _Step(Generic[T]):
    answer: T | None = None
    failure: AttemptFailed | None = None
    retry: bool = False


@dataclass(slots=True)
class _Track:
    attempts: int = 0
    may_have_acted: bool = False


class _StopBeforeDeadline(stop_base):
    """Stop when the wait before the next attempt would leave it less than MIN_ATTEMPT_S."""

    def __init__(self, deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        self._deadline = deadline
        self._loop = loop

    def __call__(self, retry_state: RetryCallState) -> bool:
        left = self._deadline - self._loop.time() - retry_state.upcoming_sleep
        return left < MIN_ATTEMPT_S


class Kernel:
    """The calls of one channel instance: its rules and its retry policy."""

    def __init__(self, channel: str, rules: ChannelRules, policy: RetryPolicy) -> None:
        self.channel = channel
        self.rules = rules
        self.policy = policy

    def failure_code(self, failure: AttemptFailed) -> str:
        """The channel's code for a failure."""
        return failure.code or self.rules.failure_codes[failure.failure]

    def describe(self, failure: AttemptFailed) -> str:
        """``CODE: detail``, e.g. for a `StatementUnavailable`."""
        return f"{self.failure_code(failure)}: {failure.detail}"

    def status_failure(self, status: int) -> Failure:
        """What an HTTP answer without this channel's signature establishes."""
        return status_failure(status, errors_before_processing=self.rules.errors_before_processing)

    def unsigned(self, status: int, code: str | None = None) -> AttemptFailed:
        """The failure to raise for an answer that does not carry this channel's signature
        (or not the status its protocol answers with), judged by its status; `code` is the
        channel's code for it when its body tells one."""
        return AttemptFailed(
            self.status_failure(status), f"HTTP {status} not from the channel", code=code
        )

    async def exchange(
        self, call: Call, attempt: Attempt[T], *, budget_s: float | None = None
    ) -> Exchanged[T]:
        """Make the attempts of one call within its budget (`budget_s`, else the policy's)."""
        loop = asyncio.get_running_loop()
        budget = budget_s if budget_s is not None else self.policy.budget_s
        deadline = loop.time() + budget
        repeatable = call in self.rules.repeatable
        track = _Track()

        async def once() -> _Step[T]:
            track.attempts += 1
            left = deadline - loop.time()
            if left < MIN_ATTEMPT_S:
                return _Step(failure=AttemptFailed(Failure.NOT_SENT, "call budget spent"))
            timeout = left
            cap = self.policy.attempt_timeout_s
            if cap is not None and repeatable and track.attempts < self.policy.max_attempts:
                timeout = min(left, cap)
            try:
                async with asyncio.timeout(timeout):
                    verdict = await attempt(timeout)
            except AttemptFailed as failed:
                return self._failed(failed, repeatable, track)
            except Exception as exc:  # a transport exception the attempt did not wrap
                failure = classify(exc)
                if failure is None:
                    raise
                return self._failed(AttemptFailed(failure, describe(exc)), repeatable, track)
            if isinstance(verdict, Busy):
                track.may_have_acted |= verdict.may_have_acted
                return _Step(answer=verdict.value, retry=repeatable and call is not Call.CREATE)
            return _Step(answer=verdict.value)

        def before_sleep(state: RetryCallState) -> None:
            step = state.outcome.result() if state.outcome else None
            log.info(
                "channel_call_retry",
                channel=self.channel,
                call=call.value,
                attempt=state.attempt_number,
                failure=step.failure.failure.value if step and step.failure else "busy",
                wait_s=round(state.upcoming_sleep, 3),
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.max_attempts) | _StopBeforeDeadline(deadline, loop),
            wait=wait_full_jitter(
                multiplier=self.policy.backoff_s,
                max=self.policy.backoff_s * BACKOFF_CAP_FACTOR,
            ),
            retry=retry_if_result(lambda step: step.retry),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            before_sleep=before_sleep,
        )
        step: _Step[T] = await retrying(once)
        if step.failure is not None:
            log.info(
                "channel_call_failed",
                channel=self.channel,
                call=call.value,
                failure=step.failure.failure.value,
                detail=step.failure.detail,
                attempts=track.attempts,
                may_have_acted=track.may_have_acted,
            )
        return Exchanged(step.answer, step.failure, track.may_have_acted, track.attempts)

    @staticmethod
    def _failed(failed: AttemptFailed, repeatable: bool, track: _Track) -> _Step[T]:
        acted = failed.failure.may_have_acted
        track.may_have_acted |= acted
        retry = failed.failure.transient and (repeatable or not acted)
        return _Step(failure=failed, retry=retry)

    def result(
        self, call: Call, exchanged: Exchanged[T], read: Callable[[T], ChannelResult]
    ) -> ChannelResult:
        """The ChannelResult of a call: the answer through the channel's `read` (its results
        table), or the failure; THE rule applied to either."""
        if exchanged.failure is not None:
            return self.failure_result(call, exchanged)
        assert exchanged.answer is not None
        return self.settle(call, read(exchanged.answer), exchanged.may_have_acted)

    async def call(
        self, call: Call, attempt: Attempt[T], read: Callable[[T], ChannelResult]
    ) -> ChannelResult:
        """`exchange` then `result`."""
        return self.result(call, await self.exchange(call, attempt), read)

    def failure_result(self, call: Call, exchanged: Exchanged[T]) -> ChannelResult:
        """A call that got no answer to go by: UNKNOWN when the channel may have acted; else
        (nothing happened there) a create fails over, a refund or close may be sent again, and a
        query could not tell. `raw` says how the last attempt failed and after how many."""
        failure = exchanged.failure
        assert failure is not None
        outcome, decision = Outcome.UNKNOWN, Decision.RETRY
        if not exchanged.may_have_acted and call is Call.CREATE:
            outcome, decision = Outcome.SYSTEM_ERROR, Decision.FAILOVER
        elif not exchanged.may_have_acted and call.changes:
            outcome = Outcome.SYSTEM_ERROR
        raw = {"failure": failure.failure.value, "attempts": exchanged.attempts}
        return ChannelResult(outcome, decision, self.failure_code(failure), failure.detail, raw=raw)

    @staticmethod
    def settle(call: Call, result: ChannelResult, may_have_acted: bool) -> ChannelResult:
        """THE rule, on the result the channel's table made of its last answer."""
        if result.decision is Decision.FAILOVER and call is not Call.CREATE:
            # an order exists (or this is not about one): the payment stays at this channel
            result = replace(result, decision=Decision.RETRY)
        if (
            may_have_acted
            and call.creates
            and (result.outcome is Outcome.SYSTEM_ERROR or result.decision is Decision.FAILOVER)
        ):
            return ChannelResult(
                Outcome.UNKNOWN,
                Decision.RETRY,
                result.channel_code,
                "an earlier attempt may have reached the channel: query it",
                raw=result.raw,
            )
        return result
