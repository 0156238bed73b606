"""One HTTP attempt at a channel, and the one classification of how it can fail.

`request` / `send` make the attempt with aiohttp and turn every transport exception into an
`AttemptFailed` of the right `Failure`: a connection that could not be made is NOT_SENT (the
channel cannot have acted); a timeout or a connection that broke once the request may have left
is TIMEOUT / DROPPED (it may have). What the channel answered is the channel package's to read:
it verifies the signature and parses, and raises `AttemptFailed` for an answer it cannot trust
(`status_failure` says what an HTTP status without the channel's signature means).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL


class Failure(enum.StrEnum):
    """Why an attempt got no answer to go by, and so whether the channel may have acted."""

    NOT_SENT = "not_sent"
    """Connection refused, DNS, TLS or connect timeout: the request never left."""
    HTTP_REFUSED = "http_refused"
    """An HTTP status without the channel's signature that refuses the request (3xx, 4xx but
    429): it was turned away before the channel's logic, and would be again."""
    HTTP_UNAVAILABLE = "http_unavailable"
    """An HTTP status without the channel's signature that means "not now" before the channel's
    logic (429; for a channel that says so, its 5xx): try again."""
    TIMEOUT = "timeout"
    """No answer within the time the attempt had: the request may have acted."""
    DROPPED = "dropped"
    """The connection broke after the request may have been sent."""
    HTTP_ERROR = "http_error"
    """A 5xx without the channel's signature (a proxy, a crash behind it): it may have acted."""
    BAD_SIGNATURE = "bad_signature"
    """An answer whose signature is missing or does not verify: whatever it says, the request
    may have acted."""
    BAD_ANSWER = "bad_answer"
    """A verified answer that is unreadable, too large or about another order."""

    @property
    def may_have_acted(self) -> bool:
        """Whether the channel may have done what the request asked."""
        return self not in (Failure.NOT_SENT, Failure.HTTP_REFUSED, Failure.HTTP_UNAVAILABLE)

    @property
    def transient(self) -> bool:
        """Whether another attempt may go differently (a bad signature or answer would not)."""
        return self not in (Failure.HTTP_REFUSED, Failure.BAD_SIGNATURE, Failure.BAD_ANSWER)


class AttemptFailed(Exception):
    """One attempt got no answer to go by. `code` overrides the channel's code for the
    failure when the channel can tell more (WeChat's unsigned 401 is its SIGN_ERROR)."""

    def __init__(self, failure: Failure, detail: str, *, code: str | None = None) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail
        self.code = code


def status_failure(status: int, *, errors_before_processing: bool = False) -> Failure:
    """What an HTTP answer without the channel's signature establishes, by its status:
    2xx nothing (a success must be signed), 3xx/4xx a refusal, 429 "not now", 5xx a failure
    that may have come after the channel acted, unless the channel's protocol says its 5xx
    come from before its logic (`errors_before_processing`)."""
    if status == 429 or (status >= 500 and errors_before_processing):
        return Failure.HTTP_UNAVAILABLE
    if status >= 500:
        return Failure.HTTP_ERROR
    if status >= 300:
        return Failure.HTTP_REFUSED
    return Failure.BAD_SIGNATURE


def classify(exc: BaseException) -> Failure | None:
    """The failure an exception of the HTTP client means, or None for anything else."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Failure.NOT_SENT  # before anything was written to the channel
    if isinstance(exc, aiohttp.InvalidURL):
        return Failure.NOT_SENT
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, aiohttp.ClientError):
        return Failure.DROPPED
    return None


def describe(exc: BaseException) -> str:
    """A short text for a transport exception (no URL query, no headers)."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return type(exc).__name__


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    """Case-insensitive (aiohttp's)."""
    body: bytes


@asynccontextmanager
async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    timeout_s: float,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """One request, its response streamed in the body of the `async with`; a transport failure
    there or while connecting raises AttemptFailed. Redirects are not followed."""
    try:
        async with http.request(
            method,
            url,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=max(timeout_s, 0.001)),
            allow_redirects=False,
        ) as resp:
            yield resp
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = classify(exc)
        assert failure is not None
        raise AttemptFailed(failure, describe(exc)) from exc


async def read_limited(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body, refusing one larger than `max_bytes` (larger than any the channel
    sends) with a BAD_ANSWER."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise AttemptFailed(Failure.BAD_ANSWER, f"answer larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str | URL,
    *,
    timeout_s: float,
    max_bytes: int,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One request and its whole (bounded) answer. Raises AttemptFailed."""
    async with request(http, method, url, timeout_s=timeout_s, data=data, headers=headers) as resp:
        body = await read_limited(resp, max_bytes)
        return Reply(resp.status, resp.headers, body)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case (an `IncomingRequest`'s headers are a plain dict)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None
