"""The adapter kernel's rule, retries and deadline (adapters.kernel.calls), with scripted
attempts: no network. Every kind of transport failure x what the next attempt says x create /
refund / query x a channel that may repeat the call or not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.base import ChannelResult, Decision, Outcome
from adapters.kernel.calls import (
    Answer,
    Busy,
    Call,
    ChannelRules,
    Kernel,
    RetryPolicy,
)
from adapters.kernel.config import ChannelConfig
from adapters.kernel.transport import AttemptFailed, Failure

CODES = {failure: failure.value.upper() for failure in Failure}
EVERY_CALL = ChannelRules(repeatable=frozenset(Call), failure_codes=CODES)
NO_REPEAT = ChannelRules(repeatable=frozenset(), failure_codes=CODES)

OK = "ok"
"""An answer the channel's table reads as WAITING."""
SYSTEM_ERROR = "system_error"
"""A busy answer ("nothing done, ask again"): the channel's own system error."""
SYSTEM_ERROR_ACTED = "system_error_acted"
"""A busy answer the channel's table says may have acted all the same."""
Step = Failure | str

ACTED = [f for f in Failure if f.may_have_acted]
NOT_ACTED = [f for f in Failure if not f.may_have_acted]


def read(call: Call) -> Callable[[str], ChannelResult]:
    """The channel's results table of this fake channel."""

    def mapping(value: str) -> ChannelResult:
        if value == OK:
            return ChannelResult(Outcome.WAITING, Decision.FINAL, "OK")
        if call is Call.CREATE:
            return ChannelResult(Outcome.SYSTEM_ERROR, Decision.FAILOVER, "SYSTEM_ERROR")
        if call is Call.REFUND:
            return ChannelResult(Outcome.SYSTEM_ERROR, Decision.FAILOVER, "SYSTEM_ERROR")
        return ChannelResult(Outcome.UNKNOWN, Decision.RETRY, "SYSTEM_ERROR")

    return mapping


@dataclass
class Script:
    """Attempts that go as scripted; records the time each was given."""

    steps: Sequence[Step]
    timeouts: list[float] = field(default_factory=list)
    sleep_s: float = 0.0

    async def __call__(self, timeout_s: float) -> Answer[str] | Busy[str]:
        self.timeouts.append(timeout_s)
        step = self.steps[min(len(self.timeouts), len(self.steps)) - 1]
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        if isinstance(step, Failure):
            raise AttemptFailed(step, f"scripted {step.value}")
        if step == OK:
            return Answer(OK)
        return Busy(SYSTEM_ERROR, may_have_acted=step == SYSTEM_ERROR_ACTED)

    @property
    def attempts(self) -> int:
        return len(self.timeouts)


def kernel(
    rules: ChannelRules = EVERY_CALL,
    *,
    max_attempts: int = 2,
    budget_s: float = 5.0,
    backoff_s: float = 0.0,
    attempt_timeout_s: float | None = None,
) -> Kernel:
    return Kernel("test", rules, RetryPolicy(budget_s, max_attempts, backoff_s, attempt_timeout_s))


def run(k: Kernel, call: Call, script: Script) -> ChannelResult:
    return asyncio.run(k.call(call, script, read(call)))


# ---- THE rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [Call.CREATE, Call.REFUND])
@pytest.mark.parametrize("first", ACTED)
def test_may_have_acted_then_system_error_is_unknown_never_failover(
    call: Call, first: Failure
) -> None:
    script = Script([first, SYSTEM_ERROR])
    result = run(kernel(), call, script)
    if first.transient:  # retried (the channel may repeat the call), the system error came next
        assert script.attempts == 2
        assert result.channel_code == "SYSTEM_ERROR"
    else:  # a bad signature or answer is not asked again
        assert script.attempts == 1
    assert (result.outcome, result.decision) == (Outcome.UNKNOWN, Decision.RETRY)


def test_a_timeout_then_system_error_on_a_query_is_what_the_table_says() -> None:
    result = run(kernel(), Call.QUERY, Script([Failure.TIMEOUT, SYSTEM_ERROR]))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "SYSTEM_ERROR",
    )


def test_connection_refused_on_every_attempt_fails_over() -> None:
    script = Script([Failure.NOT_SENT])
    result = run(kernel(max_attempts=3), Call.CREATE, script)
    assert script.attempts == 3
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.SYSTEM_ERROR,
        Decision.FAILOVER,
        "NOT_SENT",
    )
    assert result.raw == {"failure": "not_sent", "attempts": 3}


@pytest.mark.parametrize(
    ("call", "outcome", "decision"),
    [
        (Call.CREATE, Outcome.SYSTEM_ERROR, Decision.FAILOVER),
        (Call.REFUND, Outcome.SYSTEM_ERROR, Decision.RETRY),
        (Call.CLOSE, Outcome.SYSTEM_ERROR, Decision.RETRY),
        (Call.QUERY, Outcome.UNKNOWN, Decision.RETRY),
        (Call.REFUND_QUERY, Outcome.UNKNOWN, Decision.RETRY),
    ],
)
@pytest.mark.parametrize("failure", NOT_ACTED)
def test_a_call_that_cannot_have_acted(
    call: Call, outcome: Outcome, decision: Decision, failure: Failure
) -> None:
    result = run(kernel(), call, Script([failure]))
    assert (result.outcome, result.decision, result.channel_code) == (
        outcome,
        decision,
        CODES[failure],
    )


@pytest.mark.parametrize("call", [Call.CREATE, Call.REFUND, Call.QUERY])
@pytest.mark.parametrize("failure", ACTED)
def test_a_call_that_may_have_acted_and_got_no_answer_is_unknown(
    call: Call, failure: Failure
) -> None:
    result = run(kernel(NO_REPEAT), call, Script([failure]))
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        CODES[failure],
    )


@pytest.mark.parametrize("call", [Call.CREATE, Call.REFUND])
def test_refused_after_an_earlier_timeout_is_still_unknown(call: Call) -> None:
    script = Script([Failure.TIMEOUT, Failure.NOT_SENT])
    result = run(kernel(), call, script)
    assert script.attempts == 2
    assert (result.outcome, result.decision) == (Outcome.UNKNOWN, Decision.RETRY)


def test_a_busy_answer_that_may_have_acted_makes_a_later_refusal_unknown() -> None:
    script = Script([SYSTEM_ERROR_ACTED, Failure.NOT_SENT])
    result = run(kernel(), Call.REFUND, script)
    assert script.attempts == 2
    assert (result.outcome, result.decision) == (Outcome.UNKNOWN, Decision.RETRY)


@pytest.mark.parametrize("call", [Call.CREATE, Call.REFUND, Call.QUERY])
@pytest.mark.parametrize("first", [*Failure, SYSTEM_ERROR])
def test_a_definitive_answer_after_anything_stands(call: Call, first: Step) -> None:
    """A repeat that got the order's answer (the channel keeps one order per id) is believed;
    where there was no repeat, the call ends as the first attempt alone would."""
    script = Script([first, OK])
    result = run(kernel(), call, script)
    if script.attempts == 2:
        assert (result.outcome, result.decision, result.channel_code) == (
            Outcome.WAITING,
            Decision.FINAL,
            "OK",
        )
    else:
        assert result == run(kernel(), call, Script([first]))


def test_only_a_create_fails_over() -> None:
    refund = run(kernel(), Call.REFUND, Script([SYSTEM_ERROR]))
    assert (refund.outcome, refund.decision) == (Outcome.SYSTEM_ERROR, Decision.RETRY)
    create = run(kernel(), Call.CREATE, Script([SYSTEM_ERROR]))
    assert (create.outcome, create.decision) == (Outcome.SYSTEM_ERROR, Decision.FAILOVER)


# ---- which attempts are repeated ------------------------------------------------------------


@pytest.mark.parametrize("failure", list(Failure))
@pytest.mark.parametrize("rules", [EVERY_CALL, NO_REPEAT], ids=["repeatable", "not repeatable"])
def test_which_failures_are_tried_again(failure: Failure, rules: ChannelRules) -> None:
    script = Script([failure, OK])
    run(kernel(rules), Call.CREATE, script)
    expected = {
        # cannot have acted and may go differently: always again
        Failure.NOT_SENT: 2,
        Failure.HTTP_UNAVAILABLE: 2,
        # turned away for good, or an answer that would not change: never
        Failure.HTTP_REFUSED: 1,
        Failure.BAD_SIGNATURE: 1,
        Failure.BAD_ANSWER: 1,
        # may have acted: only where the channel keeps one order per id
        Failure.TIMEOUT: 2 if rules is EVERY_CALL else 1,
        Failure.DROPPED: 2 if rules is EVERY_CALL else 1,
        Failure.HTTP_ERROR: 2 if rules is EVERY_CALL else 1,
    }[failure]
    assert script.attempts == expected


@pytest.mark.parametrize(
    ("call", "rules", "attempts"),
    [
        (Call.CREATE, EVERY_CALL, 1),  # a create fails over at once
        (Call.REFUND, EVERY_CALL, 2),
        (Call.QUERY, EVERY_CALL, 2),
        (Call.REFUND, NO_REPEAT, 1),
        (Call.QUERY, NO_REPEAT, 1),
    ],
)
def test_busy_answers_are_asked_again_on_calls_on_an_existing_order(
    call: Call, rules: ChannelRules, attempts: int
) -> None:
    script = Script([SYSTEM_ERROR, OK])
    run(kernel(rules), call, script)
    assert script.attempts == attempts


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_the_number_of_attempts_follows_the_config(max_attempts: int) -> None:
    config = ChannelConfig(base_url="http://channel.example", max_attempts=max_attempts)
    policy = RetryPolicy.of(config)
    assert (policy.max_attempts, policy.budget_s, policy.backoff_s) == (max_attempts, 5.0, 0.05)
    script = Script([Failure.DROPPED])
    result = asyncio.run(
        Kernel("test", EVERY_CALL, policy).call(Call.QUERY, script, read(Call.QUERY))
    )
    assert script.attempts == max_attempts
    assert result.outcome is Outcome.UNKNOWN


# ---- the deadline ---------------------------------------------------------------------------


def test_an_attempt_gets_what_is_left_of_the_budget() -> None:
    script = Script([Failure.NOT_SENT], sleep_s=0.1)
    started = time.monotonic()
    run(kernel(max_attempts=3, budget_s=1.0), Call.QUERY, script)
    assert script.attempts == 3
    assert script.timeouts[0] == pytest.approx(1.0, abs=0.02)
    assert script.timeouts[1] == pytest.approx(0.9, abs=0.05)
    assert script.timeouts[2] == pytest.approx(0.8, abs=0.08)
    assert time.monotonic() - started < 1.0


def test_a_hung_attempt_ends_at_the_deadline() -> None:
    script = Script([OK], sleep_s=10)
    started = time.monotonic()
    result = run(kernel(budget_s=0.3), Call.CREATE, script)
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 0.4
    assert script.attempts == 1  # the timeout used up the budget: nothing left to try again
    assert (result.outcome, result.decision, result.channel_code) == (
        Outcome.UNKNOWN,
        Decision.RETRY,
        "TIMEOUT",
    )


@settings(max_examples=15, deadline=None)
@given(backoff_s=st.floats(0.05, 2.0), budget_s=st.floats(0.1, 0.4))
def test_waits_between_attempts_never_pass_the_deadline(backoff_s: float, budget_s: float) -> None:
    script = Script([Failure.NOT_SENT])
    started = time.monotonic()
    run(kernel(max_attempts=5, budget_s=budget_s, backoff_s=backoff_s), Call.CREATE, script)
    assert time.monotonic() - started < budget_s + 0.03
    assert 1 <= script.attempts <= 5


def test_attempt_timeout_leaves_time_to_try_again_where_the_call_may_be_repeated() -> None:
    hung_once = Script([Failure.TIMEOUT, OK])
    result = run(
        kernel(EVERY_CALL, max_attempts=3, budget_s=2.0, attempt_timeout_s=0.2),
        Call.CREATE,
        hung_once,
    )
    assert result.outcome is Outcome.WAITING
    assert hung_once.timeouts[0] == pytest.approx(0.2)
    # not repeatable: the one attempt gets the whole budget
    once = Script([OK])
    run(kernel(NO_REPEAT, budget_s=2.0, attempt_timeout_s=0.2), Call.CREATE, once)
    assert once.timeouts[0] == pytest.approx(2.0, abs=0.02)
    # the last attempt gets all that is left
    last = Script([Failure.DROPPED, Failure.DROPPED, OK])
    run(kernel(EVERY_CALL, max_attempts=3, budget_s=2.0, attempt_timeout_s=0.2), Call.QUERY, last)
    assert last.timeouts[:2] == [pytest.approx(0.2), pytest.approx(0.2)]
    assert last.timeouts[2] > 1.9


def test_the_kernel_itself_cuts_an_attempt_at_its_time() -> None:
    """An attempt that ignores the time it was given is timed out by the kernel."""
    hangs_then_answers = Script([OK], sleep_s=0.5)

    async def attempt(timeout_s: float) -> Answer[str] | Busy[str]:
        if hangs_then_answers.attempts == 0:
            return await hangs_then_answers(timeout_s)
        hangs_then_answers.timeouts.append(timeout_s)
        return Answer(OK)

    k = kernel(EVERY_CALL, max_attempts=2, budget_s=2.0, attempt_timeout_s=0.1)
    started = time.monotonic()
    result = asyncio.run(k.call(Call.QUERY, attempt, read(Call.QUERY)))
    assert time.monotonic() - started < 0.4
    assert hangs_then_answers.attempts == 2
    assert result.outcome is Outcome.WAITING


# ---- what else an attempt may raise --------------------------------------------------------


def test_a_transport_exception_the_attempt_did_not_wrap_is_classified() -> None:
    import aiohttp

    async def refused(timeout_s: float) -> Answer[str]:
        raise aiohttp.ServerDisconnectedError()

    result = asyncio.run(kernel(NO_REPEAT).call(Call.CREATE, refused, read(Call.CREATE)))
    assert (result.outcome, result.channel_code) == (Outcome.UNKNOWN, "DROPPED")


def test_a_programming_error_is_not_swallowed() -> None:
    async def broken(timeout_s: float) -> Answer[str]:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        asyncio.run(kernel().call(Call.QUERY, broken, read(Call.QUERY)))


def test_every_failure_needs_a_channel_code() -> None:
    with pytest.raises(ValueError, match="no channel code"):
        ChannelRules(repeatable=frozenset(), failure_codes={Failure.NOT_SENT: "X"})


# ---- the rule, whatever the attempts say ---------------------------------------------------

STEPS = st.sampled_from([*Failure, OK, SYSTEM_ERROR, SYSTEM_ERROR_ACTED])


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(STEPS, min_size=1, max_size=5),
    call=st.sampled_from([Call.CREATE, Call.REFUND, Call.QUERY, Call.CLOSE]),
    repeatable=st.booleans(),
    max_attempts=st.integers(1, 5),
)
def test_the_rule_holds_for_any_sequence_of_attempts(
    steps: list[Step], call: Call, repeatable: bool, max_attempts: int
) -> None:
    rules = EVERY_CALL if repeatable else NO_REPEAT
    script = Script(steps)
    result = run(kernel(rules, max_attempts=max_attempts), call, script)
    made = [steps[min(i, len(steps) - 1)] for i in range(script.attempts)]
    acted = any(
        (isinstance(step, Failure) and step.may_have_acted) or step == SYSTEM_ERROR_ACTED
        for step in made
    )
    assert 1 <= script.attempts <= max_attempts
    if call.creates and acted:
        assert result.outcome is not Outcome.SYSTEM_ERROR
        assert result.decision is not Decision.FAILOVER
    if result.decision is Decision.FAILOVER:
        assert call is Call.CREATE and not acted
    for step in made[:-1]:  # every attempt but the last was followed by another: it allowed it
        if isinstance(step, Failure):
            assert step.transient and (repeatable or not step.may_have_acted)
        else:
            assert step != OK and repeatable and call is not Call.CREATE
    if all(step is Failure.NOT_SENT for step in made):
        assert script.attempts == max_attempts
        assert result.outcome is (Outcome.SYSTEM_ERROR if call.changes else Outcome.UNKNOWN)
