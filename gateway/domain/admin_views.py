"""What operators see (`/admin/…` JSON, and the console's pages): the store's records rendered
as plain JSON objects. Payments, refunds and deliveries are the merchant API's objects plus what
only operators see (the merchant, the attempts, the channel's words); merchants come without
their secrets; and the bodies of its requests (strict, as the merchant API's). Pure."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from gateway.domain.models import PaymentObject, RefundObject, WebhookDeliveryObject, rfc3339
from gateway.domain.records import (
    Attempt,
    Delivery,
    Event,
    MerchantKeyInfo,
    MerchantSummary,
    Payment,
    ReconciliationLine,
    ReconciliationRun,
    Refund,
    WebhookEndpoint,
)

Json = dict[str, Any]


def payment_view(p: Payment) -> Json:
    return {
        **PaymentObject.of(p).model_dump(mode="json"),
        "merchant_id": p.merchant_id,
        "refund_reserved": p.refund_reserved,
        "attempt_count": p.attempt_count,
        "updated_at": rfc3339(p.updated_at),
        "closed_at": rfc3339(p.closed_at),
    }


def attempt_view(a: Attempt) -> Json:
    return {
        "id": a.id,
        "seq": a.seq,
        "channel": a.channel,
        "adapter": a.adapter,
        "channel_order_id": a.channel_order_id,
        "status": a.status.value,
        "channel_code": a.channel_code,
        "channel_message": a.channel_message,
        "decision": a.decision,
        "channel_trade_no": a.channel_trade_no,
        "routing_rule": a.routing_rule,
        "routing_version": a.routing_version,
        "created_at": rfc3339(a.created_at),
        "updated_at": rfc3339(a.updated_at),
        "next_sync_at": rfc3339(a.next_sync_at),
        "sync_count": a.sync_count,
    }


def event_view(e: Event) -> Json:
    return {
        "id": e.id,
        "type": e.type,
        "refund_id": e.refund_id,
        "created_at": rfc3339(e.created_at),
        "request_id": e.request_id,
        "payload": e.payload,
    }


def refund_view(r: Refund) -> Json:
    return {
        **RefundObject.of(r).model_dump(mode="json"),
        "merchant_id": r.merchant_id,
        "channel": r.channel,
        "channel_refund_id": r.channel_refund_id,
        "channel_refund_no": r.channel_refund_no,
        "channel_code": r.channel_code,
    }


def delivery_view(d: Delivery) -> Json:
    """A delivery as operators see it: the status as stored (`delivering` while an attempt is
    under way), with its merchant."""
    return {
        **WebhookDeliveryObject.of(d).model_dump(mode="json"),
        "status": d.status.value,
        "merchant_id": d.merchant_id,
    }


def payment_detail(
    payment: Payment,
    attempts: list[Attempt],
    events: list[Event],
    deliveries: list[Delivery],
    refunds: list[Refund],
) -> Json:
    return {
        **payment_view(payment),
        "attempts": [attempt_view(a) for a in attempts],
        "events": [event_view(e) for e in events],
        "deliveries": [delivery_view(d) for d in deliveries],
        "refunds": [refund_view(r) for r in refunds],
    }


def merchant_view(m: MerchantSummary) -> Json:
    return {
        "id": m.id,
        "object": "merchant",
        "name": m.name,
        "created_at": rfc3339(m.created_at),
        "active_keys": m.active_keys,
        "previous_webhook_secret_expires_at": rfc3339(m.previous_webhook_secret_expires_at),
    }


def merchant_key_view(k: MerchantKeyInfo) -> Json:
    return {
        "id": k.id,
        "key_type": k.key_type.value,
        "status": k.status.value,
        "created_at": rfc3339(k.created_at),
        "revoked_at": rfc3339(k.revoked_at),
    }


def endpoint_view(e: WebhookEndpoint) -> Json:
    return {
        "id": e.id,
        "url": e.url,
        "events": list(e.events),
        "status": e.status.value,
        "disabled_reason": e.disabled_reason,
        "created_at": rfc3339(e.created_at),
    }


def merchant_detail(
    merchant: MerchantSummary, keys: list[MerchantKeyInfo], endpoints: list[WebhookEndpoint]
) -> Json:
    return {
        **merchant_view(merchant),
        "keys": [merchant_key_view(k) for k in keys],
        "webhook_endpoints": [endpoint_view(e) for e in endpoints],
    }


def run_view(r: ReconciliationRun) -> Json:
    return {
        "id": r.id,
        "channel": r.channel,
        "date": r.day.isoformat(),
        "status": r.status.value,
        "statement_lines": r.statement_lines,
        "our_records": r.our_records,
        "matched": r.matched,
        "missing_ours": r.missing_ours,
        "missing_channel": r.missing_channel,
        "amount_mismatch": r.amount_mismatch,
        "status_mismatch": r.status_mismatch,
        "other_channel": r.other_channel,
        "error": r.error,
        "started_at": rfc3339(r.started_at),
        "finished_at": rfc3339(r.finished_at),
    }


def line_view(line: ReconciliationLine) -> Json:
    return {
        "seq": line.seq,
        "outcome": line.outcome,
        "kind": line.kind,
        "channel_order_id": line.channel_order_id,
        "channel_refund_id": line.channel_refund_id,
        "payment_id": line.payment_id,
        "refund_id": line.refund_id,
        "merchant_id": line.merchant_id,
        "our_amount": line.our_amount,
        "their_amount": line.their_amount,
        "our_status": line.our_status,
        "their_status": line.their_status,
        "channel_trade_no": line.channel_trade_no,
        "note": line.note,
    }


# ---- request bodies -------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Reason = Annotated[StrictStr, Field(min_length=1, max_length=500)]


class ReasonRequest(_Request):
    """A change that needs a reason (revoke, reject, suspend: API.md §4.1)."""

    reason: Reason


class RotateKeyRequest(_Request):
    key_type: Literal["hmac-sha256", "ed25519", "rsa-sha256"] = "hmac-sha256"
    public_key: Annotated[StrictStr, Field(max_length=16384)] | None = None
    """PEM SubjectPublicKeyInfo (ed25519, rsa-sha256)."""
