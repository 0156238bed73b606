"""Fault-injection scenarios against real gateway processes (see tests/chaos/harness.py).

Each runs merchants' journeys while a fault strikes, lets everything settle, and checks the
invariants of tests/chaos/invariants.py. The short form runs in `make test`; the full form
(marker `chaos`, `make chaos`) runs more load, more faults, lets the status sync expire what is
left instead of closing it, and adds the restarts of the machine's shared PostgreSQL and Redis.
Figures land in var/chaos/<scenario>-<profile>.json (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tests.chaos import harness
from tests.chaos.load import Receiver
from tests.chaos.scenario import FULL, SHORT, Profile, Run, scenario, verdict

PROFILES = [pytest.param(SHORT, id="short"), pytest.param(FULL, id="full", marks=pytest.mark.chaos)]


@pytest.mark.parametrize("profile", PROFILES)
async def test_kill_9_mid_load_and_restart(profile: Profile) -> None:
    async with scenario("kill9", profile, external_simulators=True) as run:
        gw = run.cluster.gateways[0]
        downtimes: list[float] = []
        ready: list[float] = []
        kills: list[float] = []

        async def fault(run: Run) -> None:
            for k in range(profile.kills):
                await run.at_fraction((k + 1) / (profile.kills + 1))
                gw.kill9()
                kills.append(time.monotonic())
                await asyncio.sleep(1.0)  # the load keeps knocking on a dead port
                gw.start()
                ready.append(round(await gw.wait_ready(run.http), 2))
                downtimes.append(round(time.monotonic() - kills[-1], 2))

        await run.load_with(fault)
        ends = [*kills[1:], None]
        run.figures.update(
            kills=profile.kills,
            down_s=downtimes,
            restart_to_ready_s=ready,
            outage=[run.driver.outage(k, end) for k, end in zip(kills, ends, strict=True)],
        )
        result = await run.settle_and_check()
    assert result["violations"] == [], verdict(result, run.cluster)
    assert result["payments_by_status"].get("succeeded", 0) > 0


@pytest.mark.parametrize("profile", PROFILES)
async def test_two_gateways_one_killed(profile: Profile) -> None:
    async with scenario("two-gateways", profile, gateways=2, external_simulators=True) as run:
        a, b = run.cluster.gateways
        killed: list[float] = []

        async def fault(run: Run) -> None:
            await run.at_fraction(1 / 3)
            a.kill9()
            killed.append(time.monotonic())
            run.figures["killed"] = [a.name]
            if profile.name == "full":  # a comes back, then b dies for good
                await run.at_fraction(1 / 2)
                a.start()
                await a.wait_ready(run.http)
                await run.at_fraction(2 / 3)
                b.kill9()
                killed.append(time.monotonic())
                run.figures["killed"].append(b.name)

        await run.load_with(fault)
        ends = [*killed[1:], None]
        run.figures["outage"] = [
            run.driver.outage(k, end) for k, end in zip(killed, ends, strict=True)
        ]
        run.figures["answers_by_gateway"] = {
            gw.name: sum(1 for x in run.driver.answers if x.target == gw.url)
            for gw in run.cluster.gateways
        }
        result = await run.settle_and_check()
    assert result["violations"] == [], verdict(result, run.cluster)


@pytest.mark.parametrize("profile", PROFILES)
async def test_channels_erroring_timing_out_dropping_and_duplicating(profile: Profile) -> None:
    async with scenario("channel-faults", profile) as run:
        adapters = harness.ADAPTERS
        modes = {"bank": "duplicate", "wechat": "drop", "alipay": "duplicate", "unionpay": "drop"}

        async def fault(run: Run) -> None:
            for adapter in adapters:
                await run.set_faults(
                    adapter, {"error_rate": 0.3, "timeout_rate": 0.1, "notify": modes[adapter]}
                )
            await run.at_fraction(1 / 2)  # swap: the dropping channels now duplicate
            for adapter in adapters:
                swapped = "drop" if modes[adapter] == "duplicate" else "duplicate"
                await run.set_faults(adapter, {"notify": swapped})

        await run.load_with(fault)
        for adapter in adapters:  # the channels recover; everything must converge
            await run.set_faults(adapter, {"error_rate": 0, "timeout_rate": 0, "notify": "normal"})
        run.figures["faults"] = "error_rate 0.3, timeout_rate 0.1, notify drop/duplicate"
        result = await run.settle_and_check()
        db_figures = await _attempt_figures(run)
        result.update(db_figures)
        harness.save_result(f"channel-faults-{profile.name}", result)
    assert result["violations"] == [], verdict(result, run.cluster)
    assert db_figures["payments_failed_over"] > 0  # the faults did strike


async def _attempt_figures(run: Run) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(run.cluster.database_url)
    try:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM payments WHERE attempt_count > 1) AS payments_failed_over,
                   (SELECT count(*) FROM payments WHERE failure_code = 'channel_unavailable')
                       AS payments_failed_channel_unavailable,
                   (SELECT count(*) FROM payment_attempts WHERE sync_count > 0)
                       AS attempts_resolved_by_sync,
                   (SELECT count(*) FROM channel_notification_ids)
                       AS channel_notification_ids_applied,
                   (SELECT coalesce(sum(count), 0)::bigint FROM channel_notification_counts)
                       AS channel_notifications_not_applied
            """
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


@pytest.mark.parametrize("profile", PROFILES)
async def test_slow_merchant_receiver(profile: Profile) -> None:
    rng = random.Random(11)
    receiver = Receiver(
        secret="",
        delay=lambda: rng.uniform(0, 1.3),  # the gateway gives up after 1 s: ~23 % time out
        status=lambda: rng.choices([200, 500, 503], weights=[85, 10, 5])[0],
    )
    env = {
        "GATEWAY_CALLBACK_TIMEOUT_S": "1",
        "GATEWAY_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5,1,1,2,2,2",
    }
    async with scenario("slow-receiver", profile, env=env, receiver=receiver) as run:

        async def fault(run: Run) -> None:
            return None

        await run.load_with(fault)

        async def endpoint_recovers() -> None:
            receiver.delay = lambda: 0.0
            receiver.status = lambda: 200
            run.figures["deliveries_given_up_retried_by_hand"] = await run.retry_failed_deliveries()

        result = await run.settle_and_check(after_settle=endpoint_recovers)
    assert result["violations"] == [], verdict(result, run.cluster)
    assert result["callbacks_duplicates"] > 0  # timed-out attempts that did arrive


# ---- the machine's shared services: full form only ----------------------------------------
@pytest.mark.chaos
async def test_postgres_restarted_mid_load() -> None:
    profile = FULL
    with harness.services_restored():
        async with scenario("postgres-restart", profile) as run:
            began: list[float] = []

            async def fault(run: Run) -> None:
                await run.at_fraction(1 / 3)
                started = time.monotonic()
                run.figures["pg_restart_s"] = round(
                    await asyncio.to_thread(harness.restart_postgres), 2
                )
                began.append(started)

            await run.load_with(fault)
            run.figures["outage"] = run.driver.outage(began[0])
            result = await run.settle_and_check()
    assert result["violations"] == [], verdict(result, run.cluster)


@pytest.mark.chaos
async def test_redis_stopped_and_started() -> None:
    profile = FULL
    with harness.services_restored():
        async with scenario("redis-restart", profile) as run:
            window: list[float] = []

            async def fault(run: Run) -> None:
                await run.at_fraction(1 / 3)
                await asyncio.to_thread(harness.stop_redis)
                window.append(time.monotonic())
                await asyncio.sleep(3.0)
                run.figures["redis_start_s"] = round(
                    await asyncio.to_thread(harness.start_redis), 2
                )
                window.append(time.monotonic())
                run.figures["redis_down_s"] = round(window[1] - window[0], 2)

            await run.load_with(fault)
            down, up = window
            run.figures["outage"] = run.driver.outage(down)
            # fail closed: nothing sent while Redis was down was accepted before it came back
            accepted_blind = [
                a
                for a in run.driver.answers
                if a.op in ("create", "refund", "close", "get")
                and a.status is not None
                and a.status < 400
                and a.at > down
                and a.done_at < up
            ]
            refused = [
                a for a in run.driver.answers if a.code == "service_unavailable" and a.at > down
            ]
            run.figures["answered_2xx_while_down"] = len(accepted_blind)
            run.figures["refused_503_service_unavailable"] = len(refused)
            result = await run.settle_and_check()
    assert result["violations"] == [], verdict(result, run.cluster)
    assert accepted_blind == []
    assert refused, "the outage should have refused requests (fail closed)"
