"""The HTTP client the gateway calls channels with: one shared session whose requests carry
the `X-Request-Id` of the merchant request (or job) they serve, so a channel call can be
matched to the request that caused it in both sides' logs."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

from gateway.logs import current_request_id

REQUEST_ID_HEADER = "X-Request-Id"


async def _add_request_id(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestStartParams,
) -> None:
    request_id = current_request_id()
    if request_id and REQUEST_ID_HEADER not in params.headers:
        params.headers[REQUEST_ID_HEADER] = request_id


def request_id_tracing() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_add_request_id)
    return trace


def channel_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=100),
        timeout=aiohttp.ClientTimeout(total=30),
        trace_configs=[request_id_tracing()],
    )
