"""Errors as answers: each kind of `gateway.domain.errors.GatewayError` gets its HTTP status
from one table, and every error answer is RFC 9457 `application/problem+json`
(`gateway.domain.models.Problem`), with Retry-After where the error says when to retry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiohttp import web

from gateway.domain.errors import (
    AuthFailed,
    ChannelUnavailable,
    Conflict,
    FieldError,
    Forbidden,
    GatewayError,
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidState,
    MalformedJson,
    NoRoute,
    NotFound,
    PayloadTooLarge,
    RiskRejected,
    ServiceUnavailable,
    Unauthenticated,
    UnsupportedMediaType,
)
from gateway.domain.models import Problem

STATUS: dict[type[GatewayError], int] = {
    InvalidRequest: 400,
    MalformedJson: 400,
    AuthFailed: 401,
    Unauthenticated: 401,
    Forbidden: 403,
    RiskRejected: 403,
    NotFound: 404,
    InvalidState: 409,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    IdempotencyKeyReused: 422,
    NoRoute: 422,
    GatewayError: 500,
    ChannelUnavailable: 503,
    ServiceUnavailable: 503,
}
"""The HTTP status of each kind of error; a kind not listed takes its nearest base's."""


_BY_CLASS: dict[type, int] = {kind: status for kind, status in STATUS.items()}


def status_of(error: GatewayError) -> int:
    for kind in type(error).__mro__:
        status = _BY_CLASS.get(kind)
        if status is not None:
            return status
    raise AssertionError("unreachable: GatewayError is in STATUS")


def problem_response(
    status: int,
    code: str,
    detail: str,
    request_id: str,
    *,
    errors: Sequence[FieldError] = (),
    members: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    problem = Problem.of(status, code, detail, request_id, errors, members)
    return web.Response(
        status=status,
        body=problem.to_json(),
        content_type="application/problem+json",
        headers=headers,
    )


def error_response(error: GatewayError, request_id: str) -> web.Response:
    headers: dict[str, str] = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthenticated) and error.challenge is not None:
        headers["WWW-Authenticate"] = error.challenge
    return problem_response(
        status_of(error),
        error.code,
        error.detail,
        request_id,
        errors=error.errors if isinstance(error, InvalidRequest) else (),
        members=error.members(),
        headers=headers,
    )
