"""`/openapi.json` describes what the API really sends: a payment, a refund, webhook endpoints and
deliveries (a succeeded one and a failed one retried), and problem answers are made through the
API and each body is validated against the response schema the served document gives its
operation and status. And every response schema names its members (additionalProperties false,
all of them required but the problem's optional ones), and its lists name their items
(API.md §4)."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from tests.fixtures import Gateway
from tests.integration.test_refunds import paid_payment
from tests.support import MerchantClient, Receiver, Reply, free_port, wait_until


async def served_document(gateway: Gateway) -> dict[str, Any]:
    async with gateway.http.get(f"{gateway.url}/openapi.json") as r:
        assert r.status == 200
        document: dict[str, Any] = await r.json()
        return document


class Described:
    """Validates answers against the served document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def validate(self, path: str, method: str, reply: Reply) -> dict[str, Any]:
        operation = self.document["paths"][path][method]
        described = operation["responses"].get(str(reply.status))
        assert described is not None, f"{method} {path} does not describe {reply.status}"
        content_type = reply.headers["Content-Type"].split(";")[0]
        schema = described["content"][content_type]["schema"]
        validator = jsonschema_rs.Draft202012Validator(
            {**schema, "components": self.document["components"]}, validate_formats=True
        )
        body: dict[str, Any] = reply.json
        errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(body)]
        assert errors == [], (method, path, reply.status, body)
        return body


async def test_real_answers_validate_against_the_served_schema(
    gateway: Gateway, client: MerchantClient, receiver: Receiver
) -> None:
    api = Described(await served_document(gateway))

    endpoint = api.validate(
        "/v1/webhook-endpoints",
        "post",
        await client.request(
            "POST",
            "/v1/webhook-endpoints",
            {"url": receiver.url, "events": ["payment.succeeded", "refund.succeeded"]},
        ),
    )
    unreachable = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens: attempts fail
    api.validate(
        "/v1/webhook-endpoints",
        "post",
        await client.request(
            "POST", "/v1/webhook-endpoints", {"url": unreachable, "events": ["payment.succeeded"]}
        ),
    )
    listed = api.validate(
        "/v1/webhook-endpoints", "get", await client.request("GET", "/v1/webhook-endpoints")
    )
    assert len(listed["data"]) == 2

    created = await client.create_payment(
        notify_url=receiver.url, metadata={"cart": "c-77"}, payer={"ip": "203.0.113.9"}
    )
    pending = api.validate("/v1/payments", "post", created)
    assert pending["next_action"] is not None and pending["object"] == "payment"
    repeat = await client.create_payment(
        merchant_order_id=pending["merchant_order_id"], notify_url=receiver.url
    )
    assert api.validate("/v1/payments", "post", repeat)["id"] == pending["id"]

    paid = await paid_payment(gateway, client)
    got = await client.request("GET", f"/v1/payments/{paid['id']}?sync=true")
    assert api.validate("/v1/payments/{id}", "get", got)["paid_at"] is not None
    found = await client.request(
        "GET", f"/v1/payments?merchant_order_id={paid['merchant_order_id']}"
    )
    api.validate("/v1/payments", "get", found)

    refund_reply = await client.request(
        "POST",
        f"/v1/payments/{paid['id']}/refunds",
        {"merchant_refund_id": "R1", "amount": 500, "reason": "damaged"},
    )
    refund = api.validate("/v1/payments/{id}/refunds", "post", refund_reply)
    api.validate(
        "/v1/refunds/{id}", "get", await client.request("GET", f"/v1/refunds/{refund['id']}")
    )

    closed = await client.request("POST", f"/v1/payments/{pending['id']}/close", {})
    assert api.validate("/v1/payments/{id}/close", "post", closed)["status"] == "closed"

    async def deliveries(**query: str) -> Reply | None:
        search = "&".join(f"{k}={v}" for k, v in query.items())
        reply = await client.request("GET", f"/v1/webhook-deliveries?{search}")
        return reply if reply.json["data"] else None

    succeeded = await wait_until(lambda: deliveries(status="succeeded"), within=15)
    delivered = api.validate("/v1/webhook-deliveries", "get", succeeded)["data"][0]
    assert delivered["attempt_log"] and delivered["delivered_at"] is not None
    failed = await wait_until(lambda: deliveries(status="failed"), within=15)
    gave_up = api.validate("/v1/webhook-deliveries", "get", failed)["data"][0]
    assert gave_up["url"] == unreachable and gave_up["attempt_log"][0]["status_code"] is None
    retried = await client.request("POST", f"/v1/webhook-deliveries/{gave_up['id']}/retry", {})
    assert api.validate("/v1/webhook-deliveries/{id}/retry", "post", retried)["status"] == (
        "pending"
    )

    deleted = await client.request("DELETE", f"/v1/webhook-endpoints/{endpoint['id']}")
    api.validate("/v1/webhook-endpoints/{id}", "delete", deleted)

    # problems, with their optional members
    duplicate = await client.create_payment(merchant_order_id=paid["merchant_order_id"], amount=1)
    assert api.validate("/v1/payments", "post", duplicate)["payment_id"] == paid["id"]
    invalid = await client.create_payment(amount="12")
    assert api.validate("/v1/payments", "post", invalid)["errors"][0]["field"] == "amount"
    missing = await client.request("GET", "/v1/refunds/re_nothing")
    assert api.validate("/v1/refunds/{id}", "get", missing)["code"] == "not_found"
    over = await client.request(
        "POST", f"/v1/payments/{paid['id']}/refunds", {"merchant_refund_id": "R2", "amount": 10**6}
    )
    assert api.validate("/v1/payments/{id}/refunds", "post", over)["code"] == (
        "refund_exceeds_amount"
    )


def _response_schemas(document: dict[str, Any]) -> set[str]:
    """The component schemas that responses use, with every schema they reach."""
    schemas = document["components"]["schemas"]
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[1]
                if name not in found:
                    found.add(name)
                    walk(schemas[name])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for item in document["paths"].values():
        for operation in item.values():
            walk(operation["responses"])
    return found


async def test_every_response_schema_names_its_members(gateway: Gateway) -> None:
    document = await served_document(gateway)
    schemas = document["components"]["schemas"]
    names = _response_schemas(document)
    assert {"PaymentObject", "RefundObject", "WebhookEndpointList", "Problem"} <= names
    for name in sorted(names):
        schema = schemas[name]
        if "enum" in schema:
            continue
        assert schema["type"] == "object", name
        assert schema["additionalProperties"] is False, name
        assert schema["properties"], name
        if name != "Problem":  # a problem's members after request_id appear when they apply
            assert set(schema["required"]) == set(schema["properties"]), name
        for member, spec in schema["properties"].items():
            for variant in spec.get("anyOf", [spec]):
                if variant.get("type") == "array":
                    assert "items" in variant, (name, member)
                if variant.get("type") == "object" and member != "metadata":
                    assert False, f"{name}.{member}: an object without a named schema"


@pytest.mark.parametrize("path", ["/v1/payments", "/v1/webhook-deliveries"])
async def test_operations_answer_only_described_statuses(
    gateway: Gateway, client: MerchantClient, path: str
) -> None:
    """A signed request the API refuses: the status is one the document lists."""
    document = await served_document(gateway)
    reply = await client.request("GET", f"{path}?surprise=1")
    assert reply.status == 400
    Described(document).validate(path, "get", reply)
