"""The operators' API (`/admin/…`): payments across merchants (filters, pages, everything that
happened to one), refunds, merchants without secrets and their keys rotated and revoked, every
merchant's deliveries and their retry, reconciliation runs and their discrepancies, settlement,
the audit log and its filters, and the audit entries of routing and risk files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.api.context import SERVICES
from gateway.domain.permissions import Role
from gateway.domain.records import ReconciliationLine
from gateway.store import reconcile as reconcile_store
from tests.admin_support import ADMIN_TOKEN, admin_call, tokens_by_role
from tests.fixtures import ROOT, Gateway, new_merchant, start_gateway
from tests.support import MerchantClient, Receiver, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin_gateway(
    database_url: str, redis_prefix: str, redis_client: Any
) -> AsyncIterator[Gateway]:
    gw, server = await start_gateway(
        database_url, redis_prefix, admin_token=ADMIN_TOKEN, webhook_retry_schedule="0.1"
    )
    yield gw
    await gw.http.close()
    await server.close()


async def get(gw: Gateway, path: str, token: str = ADMIN_TOKEN) -> tuple[int, Any]:
    reply = await admin_call(gw, "GET", path, token=token)
    return reply.status, reply.json


async def pay(gw: Gateway, client: MerchantClient, **fields: Any) -> dict[str, Any]:
    payment = (await client.create_payment(**fields)).json
    async with gw.http.post(payment["next_action"]["url"], json={"action": "pay"}) as r:
        assert r.status == 200

    async def paid() -> Any:
        got = (await client.request("GET", f"/v1/payments/{payment['id']}")).json
        return got if got["status"] == "succeeded" else None

    result: dict[str, Any] = await wait_until(paid)
    return result


async def audit_entries(gw: Gateway, query: str = "") -> list[dict[str, Any]]:
    status, body = await get(gw, f"/admin/audit{query}")
    assert status == 200, body
    entries: list[dict[str, Any]] = body["data"]
    return entries


async def test_payments_across_merchants_filtered_and_paged(admin_gateway: Gateway) -> None:
    gw = admin_gateway
    first, second = await new_merchant(gw.database_url), await new_merchant(gw.database_url)
    made = [
        (await gw.client(creds).create_payment(amount=amount)).json
        for creds, amount in ((first, 100), (second, 200), (first, 300))
    ]
    status, body = await get(gw, "/admin/payments?limit=2")
    assert status == 200 and body["has_more"] is True
    assert [p["id"] for p in body["data"]] == [made[2]["id"], made[1]["id"]]  # newest first
    status, rest = await get(gw, f"/admin/payments?limit=2&starting_after={made[1]['id']}")
    assert [p["id"] for p in rest["data"]] == [made[0]["id"]] and rest["has_more"] is False
    status, mine = await get(gw, f"/admin/payments?merchant_id={first.merchant_id}&status=pending")
    assert {p["id"] for p in mine["data"]} == {made[0]["id"], made[2]["id"]}
    assert all(p["merchant_id"] == first.merchant_id for p in mine["data"])
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, none = await get(gw, f"/admin/payments?created_from={later.replace('+', '%2B')}")
    assert none == {"data": [], "has_more": False}
    status, on_bank = await get(
        gw, "/admin/payments?channel=bank_icbc&created_to=2999-01-01T00:00:00Z"
    )
    assert len(on_bank["data"]) == 3
    for bad in (
        "status=paid",
        "created_from=yesterday",
        "created_to=2025-01-01T00:00:00",
        "limit=0",
        "colour=red",
    ):
        status, problem = await get(gw, f"/admin/payments?{bad}")
        assert (status, problem["code"]) == (400, "invalid_request"), bad


async def test_one_payment_with_everything_that_happened_to_it(
    admin_gateway: Gateway, receiver: Receiver
) -> None:
    gw = admin_gateway
    creds = await new_merchant(gw.database_url)
    client = gw.client(creds)
    payment = await pay(gw, client, notify_url=receiver.url)
    refund = await client.request(
        "POST", f"/v1/payments/{payment['id']}/refunds", {"merchant_refund_id": "r1", "amount": 500}
    )
    assert refund.status == 201
    await receiver.wait_for(1)
    status, detail = await get(gw, f"/admin/payments/{payment['id']}")
    assert status == 200
    assert (detail["id"], detail["merchant_id"], detail["status"]) == (
        payment["id"], creds.merchant_id, "succeeded",
    )  # fmt: skip
    assert [a["status"] for a in detail["attempts"]] == ["succeeded"]
    assert detail["attempts"][0]["channel_order_id"] == payment["channel_order_id"]
    assert "payment.succeeded" in [e["type"] for e in detail["events"]]
    delivery = next(d for d in detail["deliveries"] if d["event_type"] == "payment.succeeded")
    assert delivery["url"] == receiver.url and delivery["attempt_log"]
    assert [r["merchant_refund_id"] for r in detail["refunds"]] == ["r1"]
    _, refunds = await get(gw, f"/admin/refunds?payment_id={payment['id']}")
    assert [(r["id"], r["merchant_id"]) for r in refunds["data"]] == [
        (refund.json["id"], creds.merchant_id)
    ]
    _, failed = await get(gw, f"/admin/refunds?merchant_id={creds.merchant_id}&status=failed")
    assert failed == {"data": [], "has_more": False}
    status, missing = await get(gw, "/admin/payments/pay_missing")
    assert (status, missing["code"]) == (404, "not_found")


async def test_merchants_without_secrets_and_their_keys_rotated_and_revoked(
    admin_gateway: Gateway,
) -> None:
    gw = admin_gateway
    creds = await new_merchant(gw.database_url)
    status, listed = await get(gw, "/admin/merchants")
    assert status == 200 and creds.merchant_id in [m["id"] for m in listed["data"]]
    status, detail = await get(gw, f"/admin/merchants/{creds.merchant_id}")
    text = json.dumps(detail)
    assert creds.secret is not None and creds.secret not in text
    assert creds.webhook_secret is not None and creds.webhook_secret not in text
    assert "secret_enc" not in text and "public_key_pem" not in text
    assert [k["id"] for k in detail["keys"]] == [creds.key_id]

    path = f"/admin/merchants/{creds.merchant_id}/keys"
    rotated = await admin_call(gw, "POST", path, payload={"key_type": "hmac-sha256"})
    assert rotated.status == 201, rotated.json
    issued = rotated.json
    assert issued["secret"].startswith("sk_") and issued["merchant_id"] == creds.merchant_id
    status, detail = await get(gw, f"/admin/merchants/{creds.merchant_id}")
    assert issued["secret"] not in json.dumps(detail) and detail["active_keys"] == 2

    revoke = f"{path}/{creds.key_id}/revoke"
    no_reason = await admin_call(gw, "POST", revoke, payload={})
    assert (no_reason.status, no_reason.json["errors"][0]["field"]) == (400, "reason")
    revoked = await admin_call(gw, "POST", revoke, payload={"reason": "rotated out"})
    assert revoked.status == 200, revoked.json
    again = await admin_call(gw, "POST", revoke, payload={"reason": "twice"})
    assert (again.status, again.json["code"]) == (409, "invalid_state")
    elsewhere = await admin_call(
        gw,
        "POST",
        f"/admin/merchants/mch_other/keys/{issued['key_id']}/revoke",
        payload={"reason": "x"},
    )
    assert elsewhere.status == 404
    old = await gw.client(creds).request("GET", "/v1/webhook-endpoints")
    assert old.status == 401  # the revoked key no longer signs (the key cache is 5 s at most)

    entries = await audit_entries(gw, "?action=merchant.")
    assert [(e["action"], e["actor"], e["role"]) for e in entries] == [
        ("merchant.key_revoke", "admin-token", "admin"),
        ("merchant.key_rotate", "admin-token", "admin"),
    ]
    assert entries[0]["reason"] == "rotated out" and entries[0]["target"] == f"key:{creds.key_id}"
    assert issued["secret"] not in json.dumps(entries)


async def test_every_merchants_deliveries_and_a_retry_by_support(
    admin_gateway: Gateway, receiver: Receiver
) -> None:
    gw = admin_gateway
    receiver.default_status = 500
    creds = await new_merchant(gw.database_url)
    payment = await pay(gw, gw.client(creds), notify_url=receiver.url)

    async def failed() -> Any:
        _, body = await get(gw, f"/admin/deliveries?status=failed&merchant_id={creds.merchant_id}")
        return body["data"]

    (delivery,) = await wait_until(failed)
    assert delivery["merchant_id"] == creds.merchant_id and delivery["attempts"] >= 2
    support = await tokens_by_role(gw.database_url)

    retried = await admin_call(
        gw,
        "POST",
        f"/admin/deliveries/{delivery['id']}/retry",
        token=support[Role.SUPPORT],
        payload={},
    )
    assert retried.status == 202, retried.json
    receiver.default_status = 200

    async def delivered() -> Any:
        _, body = await get(gw, f"/admin/payments/{payment['id']}")
        return any(d["status"] == "succeeded" for d in body["deliveries"])

    await wait_until(delivered)
    again = await admin_call(gw, "POST", f"/admin/deliveries/{delivery['id']}/retry", payload={})
    assert (again.status, again.json["code"]) == (409, "invalid_state")
    (entry,) = await audit_entries(gw, "?action=delivery.retry")
    assert entry["actor"].startswith("token:") and entry["role"] == "support"
    assert (entry["before"]["status"], entry["after"]["status"]) == ("failed", "pending")
    assert entry["target"] == f"delivery:{delivery['id']}"
    assert (
        entry["source_ip"] == "127.0.0.1" and entry["request_id"] == retried.headers["X-Request-Id"]
    )


async def test_reconciliation_runs_and_their_discrepancies(
    admin_gateway: Gateway, db: asyncpg.Pool
) -> None:
    gw = admin_gateway
    pool = gw.app[SERVICES].pool
    day = date(2025, 3, 1)
    await reconcile_store.insert_run(
        pool, "rcn_old", "bank_icbc", day - timedelta(days=1), datetime(2025, 3, 1, tzinfo=UTC)
    )
    await reconcile_store.insert_run(
        pool, "rcn_new", "bank_icbc", day, datetime(2025, 3, 2, tzinfo=UTC)
    )
    lines = [
        ReconciliationLine(
            n,
            outcome,
            "payment",
            f"pay_{n}_1",
            None,
            f"pay_{n}",
            None,
            "mch_1",
            100,
            their,
            "succeeded",
            "succeeded",
            None,
            None,
        )
        for n, outcome, their in (
            (1, "matched", 100),
            (2, "amount_mismatch", 90),
            (3, "missing_channel", None),
        )
    ]
    async with pool.acquire() as conn:
        await reconcile_store.copy_lines(conn, "rcn_new", lines)
    _, runs = await get(gw, "/admin/reconciliation/runs")
    assert [r["id"] for r in runs["data"]] == ["rcn_new", "rcn_old"]
    _, one_day = await get(gw, "/admin/reconciliation/runs?date=2025-03-01&channel=bank_icbc")
    assert [r["id"] for r in one_day["data"]] == ["rcn_new"]
    _, detail = await get(gw, "/admin/reconciliation/runs/rcn_new?limit=1")
    assert detail["channel"] == "bank_icbc" and detail["date"] == "2025-03-01"
    page = detail["discrepancies"]
    assert [line["outcome"] for line in page["data"]] == ["amount_mismatch"] and page["has_more"]
    _status, detail = await get(gw, "/admin/reconciliation/runs/rcn_new?limit=1&starting_after=2")
    assert [line["seq"] for line in detail["discrepancies"]["data"]] == [3]
    assert detail["discrepancies"]["has_more"] is False
    assert (await get(gw, "/admin/reconciliation/runs/rcn_none"))[0] == 404


async def test_settlement_of_the_day(admin_gateway: Gateway) -> None:
    gw = admin_gateway
    creds = await new_merchant(gw.database_url)
    client = gw.client(creds)
    for amount in (10_000, 25_000):
        await pay(gw, client, amount=amount)
    china_today = (datetime.now(UTC) + timedelta(hours=8)).date().isoformat()
    status, body = await get(gw, f"/admin/settlement?date={china_today}")
    assert status == 200, body
    rows = [r for r in body["data"] if r["merchant_id"] == creds.merchant_id]
    assert sum(r["count"] for r in rows) == 2
    assert sum(r["gross"] for r in rows) == 35_000
    assert all(r["net"] == r["gross"] - r["refunds"] - r["fees"] for r in rows)
    assert all(r["fees"] > 0 for r in rows)
    status, body = await get(gw, "/admin/settlement?date=yesterday")
    assert (status, body["code"]) == (400, "invalid_request")


async def test_the_audit_log_filtered_and_paged(admin_gateway: Gateway) -> None:
    gw = admin_gateway
    for _ in range(3):
        assert (
            await admin_call(gw, "POST", "/admin/channels/bank_icbc/reset", payload={})
        ).status == 200
    resets = await audit_entries(
        gw, "?action=channel.reset&actor=admin-token&target=channel:bank_icbc"
    )
    assert len(resets) == 3 and resets[0]["id"] > resets[1]["id"] > resets[2]["id"]
    assert resets[0]["prev_hash"] == resets[1]["hash"]  # consecutive in the chain
    assert set(resets[0]) == {
        "id", "at", "actor", "role", "action", "target", "before", "after", "reason",
        "source_ip", "request_id", "prev_hash", "hash",
    }  # fmt: skip
    _status, page = await get(
        gw, f"/admin/audit?action=channel.reset&limit=1&starting_after={resets[0]['id']}"
    )
    assert [e["id"] for e in page["data"]] == [resets[1]["id"]] and page["has_more"]
    start = resets[1]["at"].replace("+", "%2B")
    inside = await audit_entries(gw, f"?action=channel.reset&from={start}&to=2999-01-01T00:00:00Z")
    assert [e["id"] for e in inside] == [resets[0]["id"], resets[1]["id"]]
    assert await audit_entries(gw, "?actor=nobody") == []
    assert (await get(gw, "/admin/audit?from=soon"))[0] == 400


async def test_routing_and_risk_files_are_audited_with_their_diff(
    database_url: str, redis_prefix: str, redis_client: Any, tmp_path: Path
) -> None:
    routing, risk = tmp_path / "routing.yaml", tmp_path / "risk.yaml"
    routing.write_text((ROOT / "config" / "routing.yaml").read_text())
    risk.write_text((ROOT / "config" / "risk.yaml").read_text())
    gw, server = await start_gateway(
        database_url, redis_prefix, admin_token=ADMIN_TOKEN, routing_file=routing, risk_file=risk,
        config_dir=ROOT / "config",
    )  # fmt: skip
    try:
        started = await audit_entries(gw, "?action=routing.")
        assert [e["action"] for e in started] == ["routing.file_loaded"]
        assert started[0]["after"]["on_start"] and started[0]["target"] == str(routing)
        assert started[0]["after"]["content"] == routing.read_text()

        routing.write_text(routing.read_text().replace("timeout_ms: 10000", "timeout_ms: 9000", 1))
        reloaded = await admin_call(gw, "POST", "/admin/routing/reload", payload={})
        assert reloaded.json["changed"] is True
        operator_entry, loaded = (await audit_entries(gw, "?action=routing."))[:2]
        assert (operator_entry["action"], operator_entry["actor"]) == (
            "routing.reload",
            "admin-token",
        )
        assert loaded["action"] == "routing.file_loaded" and loaded["actor"].startswith("gateway:")
        assert loaded["request_id"] == reloaded.headers["X-Request-Id"]
        assert "-    timeout_ms: 10000\n+    timeout_ms: 9000\n" in loaded["after"]["diff"]
        assert loaded["before"] == {"sha256": started[0]["after"]["sha256"]}

        risk.write_text("amount_limits: [\n")  # refused whole, by the file poll

        async def refused() -> Any:
            return await audit_entries(gw, "?action=risk.file_refused")

        (entry,) = await wait_until(refused)
        assert "yaml" in entry["after"]["error"] and entry["after"]["sha256"]
    finally:
        await gw.http.close()
        await server.close()
    # the next start diffs against the file last recorded as loaded, by whichever process
    gw, server = await start_gateway(
        database_url, redis_prefix, admin_token=ADMIN_TOKEN, routing_file=routing,
        config_dir=ROOT / "config",
    )  # fmt: skip
    try:
        latest = (await audit_entries(gw, "?action=routing.file_loaded"))[0]
        assert latest["after"]["on_start"] and latest["after"]["diff"] == ""  # unchanged
    finally:
        await gw.http.close()
        await server.close()
