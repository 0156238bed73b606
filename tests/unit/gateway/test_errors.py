"""The error hierarchy and its one mapping to answers: each kind's status (API.md §1.2-§1.7),
its stable code, Retry-After and the extra members of its problem."""

from __future__ import annotations

import orjson
import pytest

from gateway.api.problems import STATUS, error_response, status_of
from gateway.domain import errors
from gateway.domain.errors import TITLES, GatewayError
from gateway.services.merchants import MerchantError
from gateway.services.operators import OperatorError


def _kinds(base: type[GatewayError]) -> set[type[GatewayError]]:
    found = set()
    for sub in base.__subclasses__():
        found |= {sub, *_kinds(sub)}
    return found


EXAMPLES: list[tuple[GatewayError, int, str]] = [
    (errors.InvalidRequest("bad"), 400, "invalid_request"),
    (errors.MalformedJson("bad"), 400, "malformed_json"),
    (errors.AuthFailed("nonce_replayed", "again"), 401, "nonce_replayed"),
    (errors.Unauthenticated("who?", challenge="Bearer"), 401, "unauthenticated"),
    (errors.SignInRefused("wrong email or password"), 401, "unauthenticated"),
    (errors.Forbidden("viewer may not"), 403, "forbidden"),
    (errors.RiskRejected("no", "max_1000"), 403, "risk_rejected"),
    (errors.NotFound.of("payment"), 404, "not_found"),
    (errors.InvalidState("closed"), 409, "invalid_state"),
    (errors.DuplicateMerchantOrderId("A1", "pay_1"), 409, "duplicate_merchant_order_id"),
    (errors.DuplicateMerchantRefundId("R1", "re_1"), 409, "duplicate_merchant_refund_id"),
    (errors.RefundExceedsAmount(1200, 1000, 200), 409, "refund_exceeds_amount"),
    (errors.IdempotencyKeyInUse(), 409, "idempotency_key_in_use"),
    (errors.PayloadTooLarge("big"), 413, "payload_too_large"),
    (errors.UnsupportedMediaType("xml"), 415, "unsupported_media_type"),
    (errors.IdempotencyKeyReused(), 422, "idempotency_key_reused"),
    (errors.NoRoute("card", 1999, "USD"), 422, "no_route"),
    (errors.ChannelUnavailable("down", retry_after_s=30), 503, "channel_unavailable"),
    (errors.ServiceUnavailable("db away", retry_after_s=2), 503, "service_unavailable"),
    (MerchantError("no merchant mch_1"), 400, "invalid_request"),
    (OperatorError("no operator a@b.example"), 400, "invalid_request"),
]


@pytest.mark.parametrize(("error", "status", "code"), EXAMPLES, ids=lambda v: str(v)[:30])
def test_each_kind_answers_its_status_and_code(error: GatewayError, status: int, code: str) -> None:
    assert (status_of(error), error.code) == (status, code)
    assert code in TITLES


def test_every_kind_is_covered_and_has_a_listed_code() -> None:
    assert {type(e) for e, _, _ in EXAMPLES} | {errors.Conflict} >= _kinds(GatewayError)
    assert all(status_of(e) != 500 for e, _, _ in EXAMPLES)
    assert set(STATUS) <= _kinds(GatewayError) | {GatewayError}


def test_the_answer_carries_retry_after_members_and_field_errors() -> None:
    unavailable = error_response(errors.ChannelUnavailable("down", retry_after_s=30), "req_1")
    assert (unavailable.status, unavailable.headers["Retry-After"]) == (503, "30")
    assert unavailable.content_type == "application/problem+json"
    reset = error_response(errors.ServiceUnavailable("re-sign", retry_after_s=0), "req_1")
    assert reset.headers["Retry-After"] == "0"
    assert "Retry-After" not in error_response(errors.ServiceUnavailable("key"), "r").headers

    duplicate = error_response(errors.DuplicateMerchantOrderId("A1", "pay_1"), "req_2")
    assert orjson.loads(duplicate.body) == {  # type: ignore[arg-type]
        "type": "https://docs.gateway.example/errors/duplicate_merchant_order_id",
        "title": "Duplicate merchant order id",
        "status": 409,
        "detail": "merchant_order_id 'A1' is already used by a payment with a different"
        " amount, currency or method.",
        "code": "duplicate_merchant_order_id",
        "request_id": "req_2",
        "payment_id": "pay_1",
    }
    invalid = error_response(errors.InvalidRequest.field("limit", "1 to 100."), "req_3")
    assert orjson.loads(invalid.body)["errors"] == [  # type: ignore[arg-type]
        {"field": "limit", "message": "1 to 100."}
    ]
    challenge = error_response(errors.Unauthenticated("who?", challenge="Bearer"), "req_4")
    assert challenge.headers["WWW-Authenticate"] == "Bearer"
