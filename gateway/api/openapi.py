"""The OpenAPI 3.1 description of the merchant API. Its schemas are generated from the pydantic
models that validate the requests and render the responses (`gateway.domain.models`), so the
document cannot drift from what the API accepts and sends."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from gateway.domain.models import (
    RESPONSE_MODELS,
    CreatePaymentRequest,
    CreateRefundRequest,
    CreateWebhookEndpointRequest,
    EmptyRequest,
    PaymentObject,
    Problem,
    QueuedDeliveryObject,
    RefundObject,
    WebhookDeliveryList,
    WebhookEndpointList,
    WebhookEndpointObject,
)

REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    CreatePaymentRequest,
    CreateRefundRequest,
    CreateWebhookEndpointRequest,
    EmptyRequest,
)


def _component(model: type[BaseModel]) -> str:
    return model.__name__


def _schemas() -> dict[str, Any]:
    """Every request model (as it validates) and every response model (as it serializes), with
    the models they nest, as component schemas whose `$ref`s resolve from the document's root."""
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in REQUEST_MODELS),
        *((m, "serialization") for m in RESPONSE_MODELS),
    ]
    refs, document = models_json_schema(modes, ref_template="#/components/schemas/{model}")
    for (model, _), ref in refs.items():  # every model is a component under its own name
        assert ref["$ref"].rsplit("/", 1)[1] == model.__name__, ref
    schemas: dict[str, Any] = document["$defs"]
    return schemas


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    ref = f"#/components/schemas/{_component(model)}"
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


AUTHENTICATED = (401, 429, 503)
"""What any signed request may get: a signature refused, a budget spent (API.md §1.7), the
replay cache away."""
WRITES = (403,)
"""What any request but a GET may get besides: its merchant is not active (API.md §1.4)."""


def _errors(*statuses: int) -> dict[str, Any]:
    ref = f"#/components/schemas/{_component(Problem)}"
    return {
        str(s): {
            "description": "Problem details (RFC 9457)",
            "content": {"application/problem+json": {"schema": {"$ref": ref}}},
        }
        for s in sorted({*statuses, *AUTHENTICATED})
    }


def _body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    ref = f"#/components/schemas/{_component(model)}"
    return {"required": required, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _query(name: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


@lru_cache(maxsize=4)
def openapi_document(server_url: str) -> dict[str, Any]:
    payment = _json(PaymentObject, "The payment")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Payment gateway merchant API",
            "version": "1",
            "description": "Every /v1 request is signed: see the README (Authorization GW1-…).",
        },
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {
                "gw1": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": 'GW1-<ALG> key_id="…",timestamp="…",nonce="…",signature="…"',
                }
            },
            "schemas": _schemas(),
        },
        "security": [{"gw1": []}],
        "paths": {
            "/v1/payments": {
                "post": {
                    "operationId": "createPayment",
                    "parameters": [_IDEMPOTENCY],
                    "requestBody": _body(CreatePaymentRequest),
                    "responses": {
                        "201": payment,
                        "200": _json(PaymentObject, "The payment an earlier request made"),
                        **_errors(400, 401, 403, 409, 413, 415, 422, 503),
                    },
                },
                "get": {
                    "operationId": "findPayment",
                    "parameters": [_query("merchant_order_id", {"type": "string"}, required=True)],
                    "responses": {"200": payment, **_errors(400, 401, 404)},
                },
            },
            "/v1/payments/{id}": {
                "get": {
                    "operationId": "getPayment",
                    "parameters": [_ID, _query("sync", {"enum": ["true", "false"]})],
                    "responses": {"200": payment, **_errors(400, 401, 404)},
                }
            },
            "/v1/payments/{id}/refunds": {
                "post": {
                    "operationId": "createRefund",
                    "parameters": [_ID, _IDEMPOTENCY],
                    "requestBody": _body(CreateRefundRequest),
                    "responses": {
                        "201": _json(RefundObject, "The refund"),
                        "200": _json(RefundObject, "The refund an earlier request made"),
                        **_errors(*WRITES, 400, 401, 404, 409, 503),
                    },
                }
            },
            "/v1/refunds/{id}": {
                "get": {
                    "operationId": "getRefund",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json(RefundObject, "The refund"),
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/webhook-endpoints": {
                "post": {
                    "operationId": "createWebhookEndpoint",
                    "parameters": [_IDEMPOTENCY],
                    "requestBody": _body(CreateWebhookEndpointRequest),
                    "responses": {
                        "201": _json(WebhookEndpointObject, "The endpoint"),
                        **_errors(*WRITES, 400, 401, 409),
                    },
                },
                "get": {
                    "operationId": "listWebhookEndpoints",
                    "responses": {
                        "200": _json(WebhookEndpointList, "The endpoints not deleted"),
                        **_errors(400, 401),
                    },
                },
            },
            "/v1/webhook-endpoints/{id}": {
                "delete": {
                    "operationId": "deleteWebhookEndpoint",
                    "parameters": [_ID],
                    "responses": {
                        "200": _json(WebhookEndpointObject, "The deleted endpoint"),
                        **_errors(*WRITES, 401, 404),
                    },
                }
            },
            "/v1/webhook-deliveries": {
                "get": {
                    "operationId": "listWebhookDeliveries",
                    "parameters": [
                        _query("status", {"enum": ["pending", "succeeded", "failed"]}),
                        _query("event_id", {"type": "string"}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
                        _query("starting_after", {"type": "string"}),
                    ],
                    "responses": {
                        "200": _json(WebhookDeliveryList, "Deliveries, newest first"),
                        **_errors(400, 401),
                    },
                }
            },
            "/v1/webhook-deliveries/{id}/retry": {
                "post": {
                    "operationId": "retryWebhookDelivery",
                    "parameters": [_ID, _IDEMPOTENCY],
                    "requestBody": _body(EmptyRequest, required=False),
                    "responses": {
                        "202": _json(QueuedDeliveryObject, "Queued for one more attempt"),
                        **_errors(*WRITES, 400, 401, 404, 409),
                    },
                }
            },
            "/v1/payments/{id}/close": {
                "post": {
                    "operationId": "closePayment",
                    "parameters": [_ID, _IDEMPOTENCY],
                    "requestBody": _body(EmptyRequest, required=False),
                    "responses": {"200": payment, **_errors(*WRITES, 400, 401, 404, 409, 503)},
                }
            },
        },
    }
