"""structlog set-up: JSON lines with the request's bound context, and a processor that redacts
secrets whatever the call site passed — the values of sensitive keys, secret-looking strings
and the passwords of URLs (`postgresql://user:…@host`, `redis://:…@host`) anywhere in a string,
exception texts and tracebacks included. The standard library's loggers (aiohttp's, asyncpg's,
any `logging` call) go through the same processors, so they are redacted and rendered alike.
Also the request id of that context: an HTTP request's or a background job's, which logs,
channel calls, events and their callbacks carry."""

from __future__ import annotations

import logging
import re
import secrets
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

_SENSITIVE = re.compile(
    r"(secret|password|passwd|token|signature|private|authorization|api_?key|master_key|"
    r"card_number|cvv|whsec)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"(whsec_[A-Za-z0-9+/=]+|sk_[A-Za-z0-9_-]{16,}|-----BEGIN [A-Z ]*PRIVATE KEY-----)"
)
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#]+(?=@[^\s@/?#]+)"
)
"""The password of a URL's userinfo (a DSN: `postgresql://user:pw@host`, `redis://:pw@host`),
up to the last `@` before the host, so that an unescaped `@` in it is not left half shown."""
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|sslpassword)=)[^&\s#]+", re.IGNORECASE)
"""A password given as a DSN's query parameter (`…?password=pw`)."""
REDACTED = "[redacted]"


_REQUEST_ID: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)
"""The request id alone, beside structlog's copy: reading it is one lookup, where
`structlog.contextvars.get_contextvars()` walks the whole context (every channel call reads
it)."""


def bind_request_id(request_id: str | None) -> None:
    """Make `request_id` this context's request id, for logs and for `current_request_id`;
    None unbinds it."""
    if request_id is None:
        structlog.contextvars.unbind_contextvars("request_id")
    else:
        structlog.contextvars.bind_contextvars(request_id=request_id)
    _REQUEST_ID.set(request_id)


def current_request_id() -> str | None:
    """The request id bound in this context: an HTTP request's `req_…` (bound by
    `gateway.api.middleware`), a unit of background work's `job_…` (`bind_job`), or None."""
    return _REQUEST_ID.get()


def bind_job() -> str:
    """Begin one unit of background work (a sync item, a periodic job's run, a command): bind a
    fresh `job_…` request id for its logs, its channel calls and the events it causes. Call it
    where the work has a context of its own (its task, `asyncio.run`), so that the id ends
    with it."""
    request_id = "job_" + secrets.token_hex(12)
    bind_request_id(request_id)
    return request_id


def redact_text(text: str) -> str:
    """`text` with secret-looking values and URL passwords replaced by REDACTED."""
    text = _SECRET_VALUE.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}", text)
    return _QUERY_PASSWORD.sub(rf"\g<head>{REDACTED}", text)


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SENSITIVE.search(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the values of sensitive keys, and secret-looking strings anywhere."""
    for key in list(event_dict):
        if key == "event":
            event_dict[key] = _scrub(event_dict[key])
        elif _SENSITIVE.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


_STDLIB_HANDLER: logging.Handler | None = None
"""The root logger's handler `configure` installed (replaced by the next call)."""


def configure(level: str = "info", json: bool = True) -> None:
    """Render structlog's and the standard library's records alike, to stderr, through the
    same processors (`redact_secrets` among them). The standard library's loggers stay at
    WARNING and above unless `level` is higher."""
    global _STDLIB_HANDLER
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # the traceback becomes text, then is redacted
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    if _STDLIB_HANDLER is not None:
        root.removeHandler(_STDLIB_HANDLER)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    _STDLIB_HANDLER = handler
