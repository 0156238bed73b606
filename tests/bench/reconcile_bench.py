"""How long reconciling a day of N transactions takes, and how its memory grows with N.

Creates a throw-away database on the local PostgreSQL, fills one channel's China day with N
succeeded payments (and their attempts) plus N/20 refunds by COPY, then runs the real
reconcile service (`gateway.reconcile.service.reconcile`: one transaction, our day loaded
into memory, the statement streamed, every result line COPYed) against a synthetic statement
iterator of the same day: every payment and refund, except 0.1 % left out, 0.1 % with another
amount, 0.1 % with another status, and 0.1 % extra lines that are not ours. With
`--format bank` each line is written as a bank statement CSV row and parsed back by the bank
protocol's parser, so parsing is counted too.

For each size it reports the wall time of a run (no tracing), then, in a second run under
tracemalloc, the peak of Python allocations during the run and the size of our side alone
(`OurSide` with its N + N/20 records), and the process's peak RSS.

    .venv/bin/python tests/bench/reconcile_bench.py --sizes 10000,50000,100000

Not part of the test suite. Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust), or
--admin-url.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adapters.bank import protocol as bank
from adapters.base import (
    Ack,
    ChannelAdapter,
    ChannelResult,
    CreatePayment,
    CreateRefund,
    IncomingRequest,
    Notification,
    StatementKind,
    StatementLine,
)
from gateway.reconcile import service
from gateway.reconcile.matching import Outcome, china_day_bounds
from gateway.store.db import create_pool, migrate

CHANNEL = "bank_icbc"
DAY = date(2024, 5, 1)
DB_NAME = "gateway_reconcile_bench"


def order_id(i: int) -> str:
    return f"pay_{i:024d}_1"


def refund_id(i: int) -> str:
    return f"re_{i:024d}"


def amount_of(i: int) -> int:
    return 100 + (i * 7919) % 500_000


class SyntheticStatement(ChannelAdapter):
    """A channel whose statement is generated on the fly (never held whole)."""

    adapter = "bank"

    def __init__(self, n: int, refunds: int, fmt: str) -> None:
        super().__init__(CHANNEL)
        self.n = n
        self.refunds = refunds
        self.fmt = fmt

    def _lines(self) -> Iterator[StatementLine]:
        start, _ = china_day_bounds(DAY)
        for i in range(self.n):
            if i % 1000 == 1:
                continue  # missing at the channel
            amount = amount_of(i) - (1 if i % 1000 == 2 else 0)
            status = "FAILED" if i % 1000 == 3 else "SUCCESS"
            yield self._line("PAYMENT", order_id(i), None, amount, status, start, i)
            if i % 1000 == 4:  # not ours
                yield self._line("PAYMENT", f"EXTRA{i:020d}", None, 4242, "SUCCESS", start, i)
        for i in range(self.refunds):
            yield self._line("REFUND", order_id(i), refund_id(i), 50, "SUCCESS", start, i)

    def _line(
        self,
        record: str,
        order: str,
        refund: str | None,
        amount: int,
        status: str,
        start: datetime,
        i: int,
    ) -> StatementLine:
        moment = start + timedelta(microseconds=i * 800_000)
        if self.fmt == "bank":
            row = bank.statement_row(
                record_type="PAYMENT" if record == "PAYMENT" else "REFUND",
                order_no=order,
                txn_id=f"B{i:020d}",
                refund_no=refund or "",
                refund_txn_id=f"BR{i:020d}" if refund else "",
                currency="CNY",
                amount=amount,
                fee=0,
                status=status,
                resp_code="00",
                trans_time=moment,
            )
            parsed = bank.parse_statement_row(row)
            assert parsed is not None
            return parsed
        return StatementLine(
            kind=StatementKind.REFUND if refund else StatementKind.PAYMENT,
            channel_order_id=order,
            channel_trade_no=f"B{i:020d}",
            amount=amount,
            status=bank.statement_status(record, status),
            channel_refund_id=refund,
            occurred_at=moment,
        )

    async def download_statement(self, day: date) -> AsyncIterator[StatementLine]:
        for i, line in enumerate(self._lines()):
            if i % 5000 == 0:
                await asyncio.sleep(0)  # as a network stream would yield
            yield line

    # the rest of the interface is not used here
    async def create_payment(self, req: CreatePayment) -> ChannelResult:
        raise NotImplementedError

    async def query_payment(self, channel_order_id: str) -> ChannelResult:
        raise NotImplementedError

    async def close_payment(self, channel_order_id: str) -> ChannelResult:
        raise NotImplementedError

    async def refund(self, req: CreateRefund) -> ChannelResult:
        raise NotImplementedError

    async def query_refund(self, channel_order_id: str, channel_refund_id: str) -> ChannelResult:
        raise NotImplementedError

    def parse_notification(self, request: IncomingRequest) -> Notification:
        raise NotImplementedError

    def ack(self, accepted: bool) -> Ack:
        raise NotImplementedError


async def fill(pool: Any, n: int, refunds: int) -> None:
    """N succeeded payments of the day with their attempts, and `refunds` refunds."""
    start, _ = china_day_bounds(DAY)
    async with pool.acquire() as conn:
        await conn.execute(
            "TRUNCATE reconciliation_lines, reconciliation_runs, refunds, payment_attempts,"
            " payments, merchants CASCADE"
        )
        await conn.execute(
            "INSERT INTO merchants (id, name, webhook_secret_enc) VALUES ('mch_bench', 'b', '')"
        )
        expires = start + timedelta(days=2)
        await conn.copy_records_to_table(
            "payments",
            columns=[
                "id", "merchant_id", "merchant_order_id", "status", "amount", "currency",
                "method", "description", "channel", "channel_order_id", "expires_at", "paid_at",
                "refunded_amount",
            ],
            records=(
                (
                    order_id(i)[:-2], "mch_bench", f"o{i}", "succeeded", amount_of(i), "CNY",
                    "card", "bench", CHANNEL, order_id(i), expires,
                    start + timedelta(microseconds=i * 800_000), 50 if i < refunds else 0,
                )
                for i in range(n)
            ),
        )  # fmt: skip
        await conn.copy_records_to_table(
            "payment_attempts",
            columns=["id", "payment_id", "seq", "channel", "adapter", "channel_order_id", "status"],
            records=(
                (f"att_{i}", order_id(i)[:-2], 1, CHANNEL, "bank", order_id(i), "succeeded")
                for i in range(n)
            ),
        )
        await conn.copy_records_to_table(
            "refunds",
            columns=[
                "id", "payment_id", "merchant_id", "merchant_refund_id", "amount", "currency",
                "status", "channel", "channel_order_id", "channel_refund_id", "completed_at",
            ],
            records=(
                (
                    refund_id(i), order_id(i)[:-2], "mch_bench", f"r{i}", 50, "CNY", "succeeded",
                    CHANNEL, order_id(i), refund_id(i),
                    start + timedelta(hours=20, microseconds=i * 100_000),
                )
                for i in range(refunds)
            ),
        )  # fmt: skip
        await conn.execute("ANALYZE")


async def our_side_bytes(pool: Any) -> tuple[int, int]:
    """(bytes, records) of our side of the day alone, under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    async with pool.acquire() as conn, conn.transaction():
        ours = await service._our_day(conn, CHANNEL, DAY)
        gc.collect()
        size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return size, len(ours)


async def bench(admin_url: str, sizes: list[int], fmt: str) -> None:
    base = admin_url.rsplit("/", 1)[0]
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    await admin.close()
    pool = await create_pool(f"{base}/{DB_NAME}", 1, 2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        print(
            f"{'N payments':>10} {'+refunds':>8} {'lines out':>9} {'run s':>7} {'lines/s':>9}"
            f" {'peak MiB':>9} {'ours MiB':>9} {'B/record':>8} {'RSS MiB':>8}"
        )
        for n in sizes:
            refunds = n // 20
            began = time.perf_counter()
            await fill(pool, n, refunds)
            filled = time.perf_counter() - began
            adapter = SyntheticStatement(n, refunds, fmt)
            gc.collect()
            began = time.perf_counter()
            report = await service.reconcile(pool, adapter, DAY)
            elapsed = time.perf_counter() - began
            stored = await pool.fetchval(
                "SELECT count(*) FROM reconciliation_lines WHERE run_id = $1", report.run_id
            )
            expected_bad = n // 1000
            assert report.summary.count(Outcome.MISSING_CHANNEL) >= expected_bad
            # the same run again, traced: the peak of Python allocations while it runs
            gc.collect()
            tracemalloc.start()
            await service.reconcile(pool, adapter, DAY)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            ours, records = await our_side_bytes(pool)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{n:>10,} {refunds:>8,} {stored:>9,} {elapsed:>7.2f}"
                f" {report.summary.statement_lines / elapsed:>9,.0f} {peak / 2**20:>9.1f}"
                f" {ours / 2**20:>9.1f} {ours / records:>8.0f} {rss:>8.0f}"
                f"   (fill {filled:.1f} s; {report.summary.discrepancies:,} discrepancies)",
                flush=True,
            )
    finally:
        await pool.close()
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--format", choices=["lines", "bank"], default="lines")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    # the service logs one line per run; keep the table readable
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sizes = [int(s) for s in args.sizes.split(",")]
    asyncio.run(bench(args.admin_url, sizes, args.format))


if __name__ == "__main__":
    main()
