"""The OpenAPI 3.1 description of the merchant API, built from the same pydantic models that
validate requests (so the two cannot drift)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from gateway.domain.errors import TITLES
from gateway.domain.models import (
    CreatePaymentRequest,
    CreateRefundRequest,
    CreateWebhookEndpointRequest,
    EmptyRequest,
)

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": sorted(TITLES)},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_PAYMENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "merchant_order_id": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "succeeded", "failed", "closed"]},
        "amount": {"type": "integer"},
        "currency": {"type": "string"},
        "method": {"type": "string"},
        "channel": {"type": ["string", "null"]},
        "channel_order_id": {"type": ["string", "null"]},
        "channel_trade_no": {"type": ["string", "null"]},
        "next_action": {
            "type": ["object", "null"],
            "properties": {"type": {"enum": ["qr_code", "redirect"]}, "url": {"type": "string"}},
        },
        "refunded_amount": {"type": "integer"},
        "failure": {"type": ["object", "null"]},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "paid_at": {"type": ["string", "null"], "format": "date-time"},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "Problem details (RFC 9457)",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for s in statuses
    }


def _json(ref: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _model_schemas(models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """Component schemas of request models, with their nested models (pydantic's `$defs`)
    hoisted beside them, so that every `$ref` resolves from the document's root."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out


@lru_cache(maxsize=4)
def openapi_document(server_url: str) -> dict[str, Any]:
    payment_ok = {"description": "The payment", **_json("Payment")}
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
            "schemas": {
                **_model_schemas(
                    {
                        "CreatePayment": CreatePaymentRequest,
                        "Empty": EmptyRequest,
                        "CreateRefund": CreateRefundRequest,
                        "CreateWebhookEndpoint": CreateWebhookEndpointRequest,
                    }
                ),
                "Refund": {"type": "object"},
                "WebhookEndpoint": {"type": "object"},
                "List": {
                    "type": "object",
                    "properties": {"data": {"type": "array"}, "has_more": {"type": "boolean"}},
                },
                "Payment": _PAYMENT,
                "Problem": _PROBLEM,
            },
        },
        "security": [{"gw1": []}],
        "paths": {
            "/v1/payments": {
                "post": {
                    "operationId": "createPayment",
                    "parameters": [_IDEMPOTENCY],
                    "requestBody": {"required": True, **_json("CreatePayment")},
                    "responses": {
                        "201": payment_ok,
                        "200": payment_ok,
                        **_errors(400, 401, 403, 409, 413, 415, 422, 503),
                    },
                },
                "get": {
                    "operationId": "findPayment",
                    "parameters": [
                        {
                            "name": "merchant_order_id",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": payment_ok, **_errors(400, 401, 404)},
                },
            },
            "/v1/payments/{id}": {
                "get": {
                    "operationId": "getPayment",
                    "parameters": [
                        _ID,
                        {
                            "name": "sync",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": ["true", "false"]},
                        },
                    ],
                    "responses": {"200": payment_ok, **_errors(401, 404)},
                }
            },
            "/v1/payments/{id}/refunds": {
                "post": {
                    "operationId": "createRefund",
                    "parameters": [_ID, _IDEMPOTENCY],
                    "requestBody": {"required": True, **_json("CreateRefund")},
                    "responses": {
                        "201": {"description": "The refund", **_json("Refund")},
                        "200": {"description": "The existing refund", **_json("Refund")},
                        **_errors(400, 401, 404, 409, 503),
                    },
                }
            },
            "/v1/refunds/{id}": {
                "get": {
                    "operationId": "getRefund",
                    "parameters": [_ID],
                    "responses": {
                        "200": {"description": "The refund", **_json("Refund")},
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/webhook-endpoints": {
                "post": {
                    "operationId": "createWebhookEndpoint",
                    "parameters": [_IDEMPOTENCY],
                    "requestBody": {"required": True, **_json("CreateWebhookEndpoint")},
                    "responses": {
                        "201": {"description": "The endpoint", **_json("WebhookEndpoint")},
                        **_errors(400, 401, 409),
                    },
                },
                "get": {
                    "operationId": "listWebhookEndpoints",
                    "responses": {
                        "200": {"description": "Endpoints", **_json("List")},
                        **_errors(401),
                    },
                },
            },
            "/v1/webhook-endpoints/{id}": {
                "delete": {
                    "operationId": "deleteWebhookEndpoint",
                    "parameters": [_ID],
                    "responses": {
                        "200": {"description": "The deleted endpoint", **_json("WebhookEndpoint")},
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/webhook-deliveries": {
                "get": {
                    "operationId": "listWebhookDeliveries",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": ["pending", "succeeded", "failed"]},
                        },
                        {
                            "name": "event_id",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {
                            "name": "starting_after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {"description": "Deliveries", **_json("List")},
                        **_errors(400, 401),
                    },
                }
            },
            "/v1/webhook-deliveries/{id}/retry": {
                "post": {
                    "operationId": "retryWebhookDelivery",
                    "parameters": [_ID, _IDEMPOTENCY],
                    "requestBody": {"required": False, **_json("Empty")},
                    "responses": {"202": {"description": "Queued"}, **_errors(400, 401, 404, 409)},
                }
            },
            "/v1/payments/{id}/close": {
                "post": {
                    "operationId": "closePayment",
                    "parameters": [_ID, _IDEMPOTENCY],
                    "requestBody": {"required": False, **_json("Empty")},
                    "responses": {"200": payment_ok, **_errors(400, 401, 404, 409, 503)},
                }
            },
        },
    }
