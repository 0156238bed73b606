"""What must hold after a fault-injection scenario, checked from the database, the channel
simulators' order books and the merchant's receiver, independently of the gateway's own view:

- every 200/201 answer has its payment (refund), and every answer for one merchant_order_id
  (merchant_refund_id) names the same object; at most one fresh 201 per merchant_order_id;
- no payment or refund is duplicated; refunds that did not fail stay within the amount, and
  refunded_amount is the sum of the succeeded ones;
- no succeeded payment is lost: every order a simulator calls paid belongs to a succeeded
  payment, every succeeded payment has exactly one paid order;
- every event reaches every destination (notify_url and the subscribed endpoint) at least
  once, with a valid signature; duplicates are counted;
- every payment and refund is final; every error answer of the API is problem+json."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import asyncpg

from gateway.domain.states import EVENT_TYPES
from tests.chaos.load import Answer, LoadDriver, Receiver

API_OPS = ("create", "refund", "close", "get")


async def backlog(db: asyncpg.Pool) -> dict[str, int]:
    row = await db.fetchrow(
        """
        SELECT (SELECT count(*) FROM payments WHERE status = 'pending') AS payments_pending,
               (SELECT count(*) FROM refunds WHERE status = 'pending') AS refunds_pending,
               (SELECT count(*) FROM callback_deliveries
                 WHERE status IN ('pending', 'delivering')) AS deliveries_open
        """
    )
    assert row is not None
    return dict(row)


async def wait_quiet(db: asyncpg.Pool, within: float) -> tuple[float, dict[str, int]]:
    """Wait until nothing is pending (payments, refunds, callback deliveries). Returns the
    seconds waited and the last backlog (non-zero when the wait ran out)."""
    started = time.monotonic()
    while True:
        left = await backlog(db)
        if not any(left.values()) or time.monotonic() - started > within:
            return round(time.monotonic() - started, 2), left
        await asyncio.sleep(0.25)


async def sim_order(
    http: aiohttp.ClientSession, bases: list[str], adapter: str, channel_order_id: str
) -> dict[str, Any] | None:
    for base in bases:
        url = f"{base}/sim/{adapter}/control/orders/{channel_order_id}"
        async with http.get(url) as r:
            if r.status == 200:
                data: dict[str, Any] = await r.json()
                return data
    return None


def _api_answers(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.op in API_OPS]


async def check(
    db: asyncpg.Pool,
    http: aiohttp.ClientSession,
    sim_bases: list[str],
    driver: LoadDriver,
    receiver: Receiver,
    *,
    endpoint_path: str = "/endpoint",
    notify_path: str = "/notify",
) -> dict[str, Any]:
    """Check every invariant; returns the figures and a list of `violations` (empty: all
    held)."""
    violations: list[str] = []
    payments = {r["id"]: dict(r) for r in await db.fetch("SELECT * FROM payments")}
    by_order = {p["merchant_order_id"]: p for p in payments.values()}
    refunds = {r["id"]: dict(r) for r in await db.fetch("SELECT * FROM refunds")}
    attempts = [dict(r) for r in await db.fetch("SELECT * FROM payment_attempts")]
    # the events merchants get (operators' records, such as payment.paid_after_close, never are)
    events = [
        dict(r)
        for r in await db.fetch("SELECT id, type, payment_id, refund_id FROM events")
        if r["type"] in EVENT_TYPES
    ]
    deliveries = Counter(
        r["status"] for r in await db.fetch("SELECT status FROM callback_deliveries")
    )

    # -- answers: every 2xx has its object, one object per key, at most one fresh 201 -------
    api = _api_answers(driver.answers)
    created_ids: dict[str, set[str]] = defaultdict(set)
    fresh_201: Counter[str] = Counter()
    for a in api:
        if a.op == "create" and a.status in (200, 201):
            created_ids[a.key].add(a.obj_id or "")
            if a.status == 201 and not a.replayed:
                fresh_201[a.key] += 1
            p = payments.get(a.obj_id or "")
            if p is None or p["merchant_order_id"] != a.key:
                violations.append(f"create {a.key}: answered {a.obj_id} but no such payment")
    for key, ids in created_ids.items():
        if len(ids) > 1:
            violations.append(f"create {key}: answers name {len(ids)} payments {sorted(ids)}")
    for key, n in fresh_201.items():
        if n > 1:
            violations.append(f"create {key}: {n} fresh 201 answers")
    refund_ids: dict[str, set[str]] = defaultdict(set)
    for a in api:
        if a.op == "refund" and a.status in (200, 201):
            refund_ids[a.key].add(a.obj_id or "")
            r = refunds.get(a.obj_id or "")
            if r is None or r["merchant_refund_id"] != a.key.split("/")[1]:
                violations.append(f"refund {a.key}: answered {a.obj_id} but no such refund")
    for key, ids in refund_ids.items():
        if len(ids) > 1:
            violations.append(f"refund {key}: answers name {len(ids)} refunds")
    not_problem = [
        a
        for a in api
        if a.status is not None
        and a.status >= 400
        and not a.content_type.startswith("application/problem+json")
    ]
    for a in not_problem[:5]:
        violations.append(f"{a.op} {a.key}: {a.status} answered as {a.content_type!r}")

    # -- nothing duplicated ------------------------------------------------------------------
    if len(by_order) != len(payments):
        violations.append("two payments share a merchant_order_id")
    refund_keys = Counter((r["payment_id"], r["merchant_refund_id"]) for r in refunds.values())
    violations += [f"refund {k} stored {n} times" for k, n in refund_keys.items() if n > 1]

    # -- refunds within the amount -----------------------------------------------------------
    per_payment: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in refunds.values():
        per_payment[r["payment_id"]].append(r)
    for pid, rs in per_payment.items():
        p = payments[pid]
        live = sum(r["amount"] for r in rs if r["status"] != "failed")
        done = sum(r["amount"] for r in rs if r["status"] == "succeeded")
        if live > p["amount"]:
            violations.append(f"payment {pid}: refunds {live} exceed amount {p['amount']}")
        if p["refunded_amount"] != done:
            violations.append(f"payment {pid}: refunded_amount {p['refunded_amount']} != {done}")

    # -- final states ------------------------------------------------------------------------
    pending = [p["id"] for p in payments.values() if p["status"] == "pending"]
    pending_refunds = [r["id"] for r in refunds.values() if r["status"] == "pending"]
    if pending:
        violations.append(f"{len(pending)} payments still pending, e.g. {pending[:3]}")
    if pending_refunds:
        violations.append(f"{len(pending_refunds)} refunds still pending")

    # -- the channels' view: nothing paid is lost, nothing paid twice -------------------------
    paid_orders: dict[str, list[str]] = defaultdict(list)
    sim_missing = 0
    sem = asyncio.Semaphore(16)

    async def look(att: dict[str, Any]) -> None:
        nonlocal sim_missing
        async with sem:
            view = await sim_order(http, sim_bases, att["adapter"], att["channel_order_id"])
        if view is None:
            sim_missing += 1
        elif view.get("paid_at"):
            paid_orders[att["payment_id"]].append(att["channel_order_id"])

    await asyncio.gather(*(look(a) for a in attempts))
    lost = [pid for pid in paid_orders if payments[pid]["status"] != "succeeded"]
    twice = [pid for pid, orders in paid_orders.items() if len(orders) > 1]
    phantom = [
        p["id"]
        for p in payments.values()
        if p["status"] == "succeeded" and p["id"] not in paid_orders
    ]
    violations += [f"payment {pid}: paid at the channel, {payments[pid]['status']} here"
                   for pid in lost]  # fmt: skip
    violations += [f"payment {pid}: paid twice at the channel" for pid in twice]
    violations += [f"payment {pid}: succeeded here, not paid at the channel" for pid in phantom]

    # -- one event per final state -----------------------------------------------------------
    payment_events = Counter(e["payment_id"] for e in events if e["type"].startswith("payment."))
    refund_events = Counter(e["refund_id"] for e in events if e["type"].startswith("refund."))
    for pid, p in payments.items():
        want = 0 if p["status"] == "pending" else 1
        if payment_events[pid] != want:
            violations.append(f"payment {pid} ({p['status']}): {payment_events[pid]} events")
    for rid, r in refunds.items():
        want = 0 if r["status"] == "pending" else 1
        if refund_events[rid] != want:
            violations.append(f"refund {rid} ({r['status']}): {refund_events[rid]} events")

    # -- callbacks: every event at every destination, at least once --------------------------
    received = Counter((r.path, r.webhook_id) for r in receiver.receipts)
    expected = set()
    for e in events:
        expected.add((endpoint_path, e["id"]))
        if payments[e["payment_id"]]["notify_url"]:
            expected.add((notify_path, e["id"]))
    missing = sorted(expected - set(received))
    if missing:
        violations.append(f"{len(missing)} callbacks never arrived, e.g. {missing[:3]}")
    event_ids = {e["id"] for e in events}
    unknown = [r.webhook_id for r in receiver.receipts if r.webhook_id not in event_ids]
    if unknown:
        violations.append(f"{len(unknown)} callbacks for events that do not exist")
    if deliveries.get("failed"):
        violations.append(f"{deliveries['failed']} deliveries given up (never acknowledged)")
    bad_signatures = sum(1 for r in receiver.receipts if not r.valid_signature)
    if bad_signatures:
        violations.append(f"{bad_signatures} callbacks with an invalid signature")

    statuses = Counter(
        "none" if a.status is None else f"{a.status // 100}xx" for a in driver.answers
    )
    return {
        "requests": len(driver.answers),
        "requests_by_op": dict(Counter(a.op for a in driver.answers)),
        "answers": dict(statuses),
        "answers_5xx": sum(1 for a in api if a.status is not None and a.status >= 500),
        "errors_by_code": dict(
            Counter(f"{a.op} {a.status} {a.code}" for a in api if (a.status or 0) >= 400)
        ),
        "no_answer_by_op": dict(Counter(a.op for a in driver.answers if a.status is None)),
        "longest_create_retry_s": driver.longest_retry_s,
        "no_answer": sum(1 for a in driver.answers if a.status is None),
        "journeys": driver.finished,
        "payments": len(payments),
        "payments_by_status": dict(Counter(p["status"] for p in payments.values())),
        "attempts": len(attempts),
        "refunds": len(refunds),
        "refunds_by_status": dict(Counter(r["status"] for r in refunds.values())),
        "refund_rejected_exceeds": sum(
            1 for a in api if a.op == "refund" and a.code == "refund_exceeds_amount"
        ),
        "duplicate_create_answers_200": sum(1 for a in api if a.op == "create" and a.status == 200),
        "idempotent_replays": sum(1 for a in api if a.replayed),
        "events": len(events),
        "deliveries_by_status": dict(deliveries),
        "callbacks_expected": len(expected),
        "callbacks_received": len(receiver.receipts),
        "callbacks_duplicates": sum(n - 1 for n in received.values() if n > 1),
        "receiver_answers": {str(k): v for k, v in receiver.answered.items()},
        "sim_paid_orders": sum(len(v) for v in paid_orders.values()),
        "sim_orders_not_found": sim_missing,
        "violations": violations,
    }
