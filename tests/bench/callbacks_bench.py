"""Callback dispatcher throughput, run by hand (not part of `make test`).

Creates a throw-away database on the local PostgreSQL, inserts --count events, each with one
delivery due now (spread over --urls receiver URLs), starts a local receiver (its own process)
and --processes dispatcher processes (each one `CallbackDispatcher`, as in the gateway, sharing
the --per-merchant and --per-host caps through the local Redis), then
samples the queue every --sample-s: deliveries done, the rate, the deliveries due and the age of
the oldest due one (what `gateway_callback_queue_depth` and `gateway_callback_oldest_due_seconds`
show). Ends when every delivery succeeded; prints deliveries per second, attempt latency, and
checks that no attempt was made twice.

    .venv/bin/python tests/bench/callbacks_bench.py --count 10000 --urls 4
    .venv/bin/python tests/bench/callbacks_bench.py --count 10000 --urls 1 --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent

import asyncpg

from gateway.auth.secretbox import SecretBox, generate_master_key
from gateway.auth.signature import KeyType
from gateway.services import merchants
from gateway.store import webhooks as webhook_store
from gateway.store.db import create_pool, migrate

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "gateway_callbacks_bench"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

_INSERT_EVENTS = """
INSERT INTO events (id, merchant_id, type, payment_id, payload, created_at)
SELECT 'evt_bench_' || g, $1, 'payment.succeeded', NULL,
       jsonb_build_object(
           'id', 'evt_bench_' || g, 'type', 'payment.succeeded', 'created_at', now(),
           'data', jsonb_build_object('object', jsonb_build_object(
               'id', 'pay_bench_' || g, 'merchant_order_id', 'order-' || g,
               'status', 'succeeded', 'amount', 1999, 'currency', 'CNY', 'method', 'card',
               'channel', 'bank_icbc', 'channel_order_id', 'pay_bench_' || g || '_1',
               'channel_trade_no', 'T' || g, 'next_action', NULL, 'refunded_amount', 0,
               'failure', NULL, 'metadata', jsonb_build_object('cart', 'c-' || g),
               'created_at', now(), 'expires_at', now() + interval '15 minutes',
               'paid_at', now()))),
       now()
  FROM generate_series(1, $2) AS g
"""
_INSERT_DELIVERIES = """
INSERT INTO callback_deliveries (id, event_id, merchant_id, url)
SELECT 'dlv_bench_' || g, 'evt_bench_' || g, $1, $3 || (g % $4)
  FROM generate_series(1, $2) AS g
"""


def _db_url(name: str) -> str:
    return PG_ADMIN.rpartition("/")[0] + "/" + name


def receiver_main(port: int, ready: MpEvent, served: Synchronized[int]) -> None:
    """A merchant's endpoint that answers 200 at once, counting what it gets."""
    from aiohttp import web

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        served.value += 1
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/hook/{n}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def dispatcher_main(args: argparse.Namespace, master_key: str, stop: MpEvent) -> None:
    """One gateway's dispatcher, as `gateway serve` runs it (uvloop when installed)."""
    import redis.asyncio as aioredis

    from gateway import logs
    from gateway.domain.webhooks import DestinationPolicy
    from gateway.services.callback_slots import SlotLeases
    from gateway.services.callbacks import CallbackDispatcher

    logs.configure("warning", True)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        pool = await create_pool(_db_url(DB_NAME), 2, args.concurrency + 4)
        redis = aioredis.Redis.from_url(REDIS_URL)
        slots = SlotLeases(
            redis, args.redis_prefix, per_merchant=args.per_merchant, per_host=args.per_host
        )
        dispatcher = CallbackDispatcher(
            pool,
            SecretBox(master_key),
            slots,
            schedule=(5.0, 300.0, 1800.0),
            destinations=DestinationPolicy(allow_private=True),
            timeout_s=10.0,
            poll_s=1.0,
            concurrency=args.concurrency,
        )
        done = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(done))
        await asyncio.to_thread(stop.wait)
        done.set()
        await task
        await pool.close()
        await redis.aclose()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        print(
            f"dispatcher {os.getpid()}: {dispatcher.attempts_started} attempts,"
            f" {cpu.ru_utime + cpu.ru_stime:.2f} s CPU"
            f" ({(cpu.ru_utime + cpu.ru_stime) * 1000 / max(1, dispatcher.attempts_started):.2f}"
            " ms per attempt, start-up included)",
            flush=True,
        )

    asyncio.run(main())


async def prepare(args: argparse.Namespace, master_key: str, base_url: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()
    pool = await create_pool(_db_url(DB_NAME), 1, 2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        issued, _ = await merchants.create_merchant(
            pool, SecretBox(master_key), "bench", KeyType.HMAC_SHA256, None
        )
        started = time.monotonic()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_INSERT_EVENTS, issued.merchant_id, args.count)
            await conn.execute(
                _INSERT_DELIVERIES, issued.merchant_id, args.count, base_url, args.urls
            )
        print(
            f"queued {args.count} events and deliveries over {args.urls} URL(s)"
            f" in {time.monotonic() - started:.2f} s"
        )
    finally:
        await pool.close()


async def watch(args: argparse.Namespace, started: float) -> tuple[float, float, float, int]:
    """Sample until every delivery succeeded; returns (seconds from the first attempt to the last
    delivery, from queueing to the last delivery, peak age, peak depth)."""
    pool = await create_pool(_db_url(DB_NAME), 1, 2)
    peak_age, peak_depth, last_done, last_t = 0.0, 0, 0, started
    print(f"{'t (s)':>6} {'done':>7} {'per s':>7} {'due':>7} {'oldest due (s)':>15}")
    try:
        while True:
            await asyncio.sleep(args.sample_s)
            now = time.monotonic()
            done = await pool.fetchval(
                "SELECT count(*) FROM callback_deliveries WHERE status = 'succeeded'"
            )
            depth, age = await webhook_store.due_stats(pool)
            peak_age, peak_depth = max(peak_age, age), max(peak_depth, depth)
            rate = (done - last_done) / (now - last_t)
            print(f"{now - started:6.1f} {done:7d} {rate:7.0f} {depth:7d} {age:15.2f}")
            last_done, last_t = done, now
            if done >= args.count:
                spans = await pool.fetchrow(
                    "SELECT extract(epoch FROM max(d.delivered_at) - (SELECT min(attempted_at)"
                    "         FROM callback_attempts))::float8 AS active,"
                    "       extract(epoch FROM max(d.delivered_at) - min(d.created_at))::float8"
                    "         AS queued"
                    "  FROM callback_deliveries d"
                )
                assert spans is not None
                return spans["active"], spans["queued"], peak_age, peak_depth
            if now - started > args.max_s:
                raise SystemExit(f"not drained in {args.max_s} s")
    finally:
        await pool.close()


async def report(args: argparse.Namespace, served: int) -> None:
    pool = await create_pool(_db_url(DB_NAME), 1, 2)
    try:
        row = await pool.fetchrow(
            "SELECT count(*) AS attempts, count(DISTINCT delivery_id) AS deliveries,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99"
            " FROM callback_attempts"
        )
        assert row is not None
        print(
            f"attempts recorded {row['attempts']} for {row['deliveries']} deliveries"
            f" (receiver got {served}); attempt latency p50 {row['p50']:.0f} ms,"
            f" p99 {row['p99']:.0f} ms"
        )
        if row["attempts"] != args.count or served != args.count:
            raise SystemExit("some attempt was made twice or not at all")
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--urls", type=int, default=4, help="distinct receiver URLs")
    parser.add_argument("--processes", type=int, default=1, help="dispatcher processes")
    parser.add_argument("--concurrency", type=int, default=32, help="attempts in flight each")
    parser.add_argument(
        "--per-merchant", type=int, default=64, help="attempts in flight for the one merchant"
    )
    parser.add_argument("--per-host", type=int, default=64, help="attempts in flight per host")
    parser.add_argument("--sample-s", type=float, default=0.5)
    parser.add_argument("--max-s", type=float, default=600.0)
    parser.add_argument("--port", type=int, default=8099, help="the receiver's port")
    args = parser.parse_args()
    args.redis_prefix = f"bench:callbacks:{os.getpid()}:"  # the run's slots, for every process

    ctx = mp.get_context("spawn")
    master_key = generate_master_key()
    ready, stop = ctx.Event(), ctx.Event()
    served: Synchronized[int] = ctx.Value("q", 0, lock=False)  # type: ignore[assignment]
    receiver = ctx.Process(target=receiver_main, args=(args.port, ready, served), daemon=True)
    receiver.start()
    if not ready.wait(20):
        raise SystemExit("the receiver did not start")
    asyncio.run(prepare(args, master_key, f"http://127.0.0.1:{args.port}/hook/"))
    workers = [
        ctx.Process(target=dispatcher_main, args=(args, master_key, stop))
        for _ in range(args.processes)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        active, queued, peak_age, peak_depth = asyncio.run(watch(args, started))
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        receiver.terminate()
        receiver.join(10)
    print(
        f"\n{args.count} deliveries in {active:.2f} s from the first attempt:"
        f" {args.count / active:.0f} deliveries/s ({args.processes} dispatcher process(es),"
        f" concurrency {args.concurrency}, {args.per_merchant} per merchant,"
        f" {args.per_host} per host, {args.urls} URL(s));"
        f" the last was delivered {queued:.2f} s after it was queued; oldest due delivery"
        f" peaked at {peak_age:.2f} s (sampled) with {peak_depth} due"
    )
    asyncio.run(report(args, served.value))

    async def drop() -> None:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


if __name__ == "__main__":
    main()
