"""Reconciliation end to end: real payments and refunds through the gateway and the simulators,
statement discrepancies injected at the simulators, the reconcile service (and the `gateway
reconcile` / `gateway settlement` commands) run for today's China date."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.api.context import SERVICES
from gateway.reconcile import service
from gateway.reconcile.matching import china_day_of
from tests.fixtures import REDIS_URL, ROOT, Gateway
from tests.support import MerchantClient, wait_until


@dataclass(frozen=True)
class Channel:
    name: str
    adapter: str
    method: str
    amount: int
    """An amount the routing file sends to this channel."""
    failed_status: str
    """A status in the channel's own words that is not a success."""
    reported: str
    """That status as the adapter reports it on a statement line."""


BANK = Channel("bank_icbc", "bank", "card", 1999, "FAILED", "failed")
ALIPAY = Channel("alipay_main", "alipay", "alipay_qr", 2999, "CLOSED", "closed")
WECHAT = Channel("wechat_main", "wechat", "wechat_qr", 3999, "REVOKED", "revoked")
UNIONPAY = Channel("unionpay_main", "unionpay", "unionpay_qr", 4999, "03", "failed")


async def paid(gateway: Gateway, client: MerchantClient, method: str, amount: int) -> Any:
    created = await client.create_payment(method=method, amount=amount)
    assert created.status == 201, created.body
    payment = created.json
    async with gateway.http.post(payment["next_action"]["url"], json={"action": "pay"}) as r:
        assert r.status == 200, await r.text()

    async def succeeded() -> Any:
        reply = await client.request("GET", f"/v1/payments/{payment['id']}")
        return reply.json if reply.json["status"] == "succeeded" else None

    return await wait_until(succeeded)


async def refunded(client: MerchantClient, payment_id: str, amount: int) -> Any:
    reply = await client.request(
        "POST",
        f"/v1/payments/{payment_id}/refunds",
        {"merchant_refund_id": "r_" + secrets.token_hex(4), "amount": amount},
    )
    assert reply.status == 201, reply.body

    async def done() -> Any:
        got = await client.request("GET", f"/v1/refunds/{reply.json['id']}")
        return got.json if got.json["status"] == "succeeded" else None

    return await wait_until(done)


async def put_statement(gateway: Gateway, adapter: str, faults: dict[str, Any]) -> None:
    async with gateway.http.put(f"{gateway.url}/sim/{adapter}/control/statement", json=faults) as r:
        assert r.status == 200, await r.text()


async def china_today(db: asyncpg.Pool, payment_id: str) -> date:
    paid_at = await db.fetchval("SELECT paid_at FROM payments WHERE id = $1", payment_id)
    return china_day_of(paid_at)


def siblings(gateway: Gateway, channel: Channel) -> list[str]:
    channels = gateway.app[SERVICES].channels.routing.config.channels
    return [n for n, c in channels.items() if c.adapter == channel.adapter]


async def run(gateway: Gateway, channel: Channel, day: date) -> service.RunReport:
    svc = gateway.app[SERVICES]
    adapter = svc.channels.adapter(channel.name)
    assert adapter is not None
    return await service.reconcile(
        svc.pool, adapter, day, lookup_channels=siblings(gateway, channel)
    )


async def lines_by_key(db: asyncpg.Pool, run_id: str) -> dict[str, asyncpg.Record]:
    rows = await db.fetch("SELECT * FROM reconciliation_lines WHERE run_id = $1", run_id)
    return {r["channel_refund_id"] or r["channel_order_id"]: r for r in rows}


@pytest.mark.parametrize("channel", [BANK, ALIPAY, WECHAT, UNIONPAY], ids=lambda c: c.name)
async def test_every_outcome_then_a_rerun_replaces_the_run(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, channel: Channel
) -> None:
    a = channel.amount
    payments = await asyncio.gather(
        *(paid(gateway, client, channel.method, a + i) for i in range(5))
    )
    assert {p["channel"] for p in payments} == {channel.name}
    matched, refunded_payment, wrong_amount, wrong_status, missing = payments
    refund = await refunded(client, refunded_payment["id"], 500)
    extra_id = "EXTRA" + secrets.token_hex(6)
    await put_statement(
        gateway,
        channel.adapter,
        {
            "missing": [missing["channel_order_id"]],
            "extra": [{"channel_order_id": extra_id, "amount": 4242}],
            "amount": {wrong_amount["channel_order_id"]: wrong_amount["amount"] - 1},
            "status": {wrong_status["channel_order_id"]: channel.failed_status},
        },
    )
    day = await china_today(db, matched["id"])

    report = await run(gateway, channel, day)

    lines = await lines_by_key(db, report.run_id)
    refund_key = await db.fetchval(
        "SELECT channel_refund_id FROM refunds WHERE id = $1", refund["id"]
    )
    outcome = {key: row["outcome"] for key, row in lines.items()}
    assert outcome == {
        matched["channel_order_id"]: "matched",
        refunded_payment["channel_order_id"]: "matched",
        refund_key: "matched",
        wrong_amount["channel_order_id"]: "amount_mismatch",
        wrong_status["channel_order_id"]: "status_mismatch",
        missing["channel_order_id"]: "missing_channel",
        extra_id: "missing_ours",
    }
    amount_line = lines[wrong_amount["channel_order_id"]]
    assert (amount_line["our_amount"], amount_line["their_amount"]) == (a + 2, a + 1)
    assert amount_line["payment_id"] == wrong_amount["id"]
    assert amount_line["merchant_id"] == client.creds.merchant_id
    status_line = lines[wrong_status["channel_order_id"]]
    assert status_line["our_status"] == "succeeded"
    assert status_line["their_status"] == channel.reported
    refund_line = lines[refund_key]
    assert refund_line["kind"] == "refund" and refund_line["refund_id"] == refund["id"]
    assert refund_line["channel_order_id"] == refunded_payment["channel_order_id"]
    assert (refund_line["our_amount"], refund_line["their_amount"]) == (500, 500)
    missing_line = lines[missing["channel_order_id"]]
    assert (missing_line["our_amount"], missing_line["their_amount"]) == (a + 4, None)
    extra_line = lines[extra_id]
    assert (extra_line["our_amount"], extra_line["their_amount"]) == (None, 4242)
    assert extra_line["payment_id"] is None

    summary = report.summary.as_dict()
    assert summary["statement_lines"] == 6 and summary["our_records"] == 6
    assert summary["outcomes"]["matched"] == {
        "count": 3,
        "our_amount": a + (a + 1) + 500,
        "their_amount": a + (a + 1) + 500,
    }
    assert summary["outcomes"]["missing_ours"]["their_amount"] == 4242
    run_row = await db.fetchrow("SELECT * FROM reconciliation_runs WHERE id = $1", report.run_id)
    assert run_row["status"] == "completed" and run_row["channel"] == channel.name
    assert run_row["day"] == day
    assert [run_row[o] for o in ("matched", "missing_ours", "missing_channel")] == [3, 1, 1]
    assert [run_row[o] for o in ("amount_mismatch", "status_mismatch")] == [1, 1]
    assert run_row["finished_at"] is not None

    # the CSV export carries every line
    out = io.StringIO()
    assert await service.export_csv(gateway.app[SERVICES].pool, report.run_id, out) == 7
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == list(service.CSV_COLUMNS)
    by_key = {r["channel_refund_id"] or r["channel_order_id"]: r for r in rows}
    assert by_key[wrong_amount["channel_order_id"]]["outcome"] == "amount_mismatch"
    assert by_key[wrong_amount["channel_order_id"]]["our_amount"] == str(a + 2)
    assert by_key[wrong_amount["channel_order_id"]]["their_amount"] == str(a + 1)
    assert by_key[extra_id]["our_amount"] == "" and by_key[extra_id]["their_amount"] == "4242"
    assert sorted(int(r["seq"]) for r in rows) == list(range(1, 8))

    # the channel corrects its statement: a re-run replaces the run and its lines
    await put_statement(gateway, channel.adapter, {})
    again = await run(gateway, channel, day)
    assert again.run_id != report.run_id and again.replaced == 1
    runs = await db.fetch(
        "SELECT id FROM reconciliation_runs WHERE channel = $1 AND day = $2", channel.name, day
    )
    assert [r["id"] for r in runs] == [again.run_id]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM reconciliation_lines WHERE run_id = $1", report.run_id
        )
        == 0
    )
    lines = await lines_by_key(db, again.run_id)
    assert {row["outcome"] for row in lines.values()} == {"matched"}
    assert len(lines) == 6
    assert again.summary.discrepancies == 0


async def test_shared_statement_late_payment_and_failed_run(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool
) -> None:
    """Both bank channels share one bank account in the routing file, so bank_cmb's payment is
    on bank_icbc's statement: skipped, not missing_ours. A payment closed at our side but
    paid at the channel is a status mismatch. A day the bank cannot give fails the run and
    keeps the previous one."""
    icbc = await paid(gateway, client, "card", 1999)
    cmb = await paid(gateway, client, "card", 500_000)  # bank_cmb is cheaper for this amount
    assert (icbc["channel"], cmb["channel"]) == ("bank_icbc", "bank_cmb")
    late = await paid(gateway, client, "card", 1500)
    # as if we had closed it before the bank's notification came (a late payment)
    await db.execute(
        "UPDATE payments SET status = 'closed', paid_at = NULL WHERE id = $1", late["id"]
    )
    day = await china_today(db, icbc["id"])

    report = await run(gateway, BANK, day)
    lines = await lines_by_key(db, report.run_id)
    assert set(lines) == {icbc["channel_order_id"], late["channel_order_id"]}
    assert lines[icbc["channel_order_id"]]["outcome"] == "matched"
    late_line = lines[late["channel_order_id"]]
    assert late_line["outcome"] == "status_mismatch"
    assert (late_line["our_status"], late_line["their_status"]) == ("closed", "succeeded")
    assert late_line["payment_id"] == late["id"]
    assert report.summary.other_channel == 1

    cmb_report = await run(gateway, Channel("bank_cmb", "bank", "card", 0, "", ""), day)
    cmb_lines = await lines_by_key(db, cmb_report.run_id)
    assert cmb_lines[cmb["channel_order_id"]]["outcome"] == "matched"
    assert cmb_report.summary.other_channel == 2  # icbc's two payments

    future = day + timedelta(days=2)  # the bank has no statement for it yet
    with pytest.raises(service.ReconcileError) as failed:
        await run(gateway, BANK, future)
    failed_row = await db.fetchrow(
        "SELECT * FROM reconciliation_runs WHERE id = $1", failed.value.run_id
    )
    assert failed_row["status"] == "failed" and failed_row["error"]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM reconciliation_lines WHERE run_id = $1", failed.value.run_id
        )
        == 0
    )
    current = await service.current_run(gateway.app[SERVICES].pool, "bank_icbc", day)
    assert current is not None and current.id == report.run_id


async def test_commands_reconcile_and_settlement(
    gateway: Gateway, client: MerchantClient, db: asyncpg.Pool, tmp_path: Path
) -> None:
    """`gateway reconcile` and `gateway settlement`, run as commands (a process of their own,
    as an operator runs them) against the test gateway's database and simulators."""
    first = await paid(gateway, client, "alipay_qr", 10_000)
    second = await paid(gateway, client, "alipay_qr", 2_000)
    card = await paid(gateway, client, "card", 1999)
    await refunded(client, first["id"], 3_000)
    await put_statement(gateway, "alipay", {"missing": [second["channel_order_id"]]})
    day = await china_today(db, first["id"])
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": gateway.database_url,
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_PUBLIC_URL": gateway.url,
        "GATEWAY_ROUTING_FILE": str(ROOT / "config" / "routing.yaml"),
        "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
    }

    async def gateway_command(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    export = tmp_path / "alipay.csv"

    code, out, err = await gateway_command(
        "reconcile", "--channel", "alipay_main", "--date", day.isoformat(), "--csv", str(export)
    )
    assert code == 0, err
    assert "channel alipay_main" in out
    table = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.strip()}
    assert table["matched"] == ["2", "13000", "13000"]  # the first payment and its refund
    assert table["missing_channel"] == ["1", "2000", "0"]
    assert table["missing_ours"] == ["0", "0", "0"]
    assert "1 discrepancies" in out
    assert "exported 3 lines" in err
    rows = list(csv.DictReader(export.open(encoding="utf-8")))
    assert sorted(r["outcome"] for r in rows) == ["matched", "matched", "missing_channel"]
    assert {r["payment_id"] for r in rows} == {first["id"], second["id"]}

    code, out, err = await gateway_command("settlement", "--date", day.isoformat(), "--json")
    assert code == 0, err
    summary = json.loads(out)
    rows_by_channel = {r["channel"]: r for r in summary["data"]}
    alipay = rows_by_channel["alipay_main"]
    # alipay_main charges 0.6 %: 60 on 10,000 and 12 on 2,000
    assert alipay == {
        "merchant_id": client.creds.merchant_id,
        "channel": "alipay_main",
        "currency": "CNY",
        "count": 2,
        "gross": 12_000,
        "refund_count": 1,
        "refunds": 3_000,
        "fees": 72,
        "net": 12_000 - 3_000 - 72,
        "fee_known": True,
    }
    assert rows_by_channel[card["channel"]]["fees"] == 11  # 0.55 % of 1999, rounded half up
    assert summary["totals"]["CNY"]["gross"] == 12_000 + 1999
    # the same summary the admin view gets
    svc = gateway.app[SERVICES]
    assert await service.settlement_summary(svc.pool, day, svc.channels.routing) == summary

    code, out, err = await gateway_command(
        "reconcile", "--channel", "nope", "--date", day.isoformat()
    )
    assert code == 2 and "no channel 'nope'" in err
