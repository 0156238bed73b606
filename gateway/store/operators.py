"""Operators' accounts, service tokens, console sessions and the sign-in throttle. Statements:
`sql/operators.sql`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.domain.permissions import Role
from gateway.domain.records import Operator, OperatorSession, OperatorToken, SignInCounter
from gateway.store import rows
from gateway.store.db import Connection, Executor
from gateway.store.queries import query

_INSERT_OPERATOR = query("insert_operator")
_OPERATOR_BY_EMAIL = query("operator_by_email")
_LOCK_OPERATOR_BY_EMAIL = query("lock_operator_by_email")
_LIST_OPERATORS = query("list_operators")
_DISABLE_OPERATOR = query("disable_operator")
_SET_PASSWORD_HASH = query("set_operator_password_hash")
_INSERT_TOKEN = query("insert_operator_token")
_ACTIVE_TOKEN = query("active_operator_token")
_REVOKE_TOKEN = query("revoke_operator_token")
_LIST_TOKENS = query("list_operator_tokens")
_INSERT_SESSION = query("insert_operator_session")
_LIVE_SESSION = query("live_operator_session")
_END_SESSION = query("end_operator_session")
_LOCK_SIGN_IN_FAILURES = query("lock_sign_in_failures")
_RECORD_SIGN_IN_FAILURE = query("record_sign_in_failure")
_CLEAR_SIGN_IN_FAILURES = query("clear_sign_in_failures")
_PURGE_SIGN_IN_FAILURES = query("purge_sign_in_failures")


# ---- accounts -------------------------------------------------------------------------------


async def insert_operator(
    db: Executor, operator_id: str, email: str, role: Role, password_hash: str
) -> Operator | None:
    """None when the email is taken."""
    row = await db.fetchrow(_INSERT_OPERATOR, operator_id, email, role.value, password_hash)
    return None if row is None else rows.operator(row)


async def operator_by_email(db: Executor, email: str) -> Operator | None:
    row = await db.fetchrow(_OPERATOR_BY_EMAIL, email)
    return None if row is None else rows.operator(row)


async def lock_operator_by_email(conn: Connection, email: str) -> Operator | None:
    """The account, locked until the caller's transaction ends."""
    row = await conn.fetchrow(_LOCK_OPERATOR_BY_EMAIL, email)
    return None if row is None else rows.operator(row)


async def list_operators(db: Executor) -> list[Operator]:
    return [rows.operator(r) for r in await db.fetch(_LIST_OPERATORS)]


async def disable_operator(conn: Connection, operator_id: str) -> Operator | None:
    """Disable the account and end its sessions; None when it was disabled already."""
    row = await conn.fetchrow(_DISABLE_OPERATOR, operator_id)
    return None if row is None else rows.operator(row)


async def set_password_hash(db: Executor, operator_id: str, password_hash: str) -> None:
    await db.execute(_SET_PASSWORD_HASH, operator_id, password_hash)


# ---- service tokens -------------------------------------------------------------------------


async def insert_token(
    db: Executor, token_id: str, name: str, role: Role, token_hash: bytes
) -> OperatorToken:
    row = await db.fetchrow(_INSERT_TOKEN, token_id, name, role.value, token_hash)
    assert row is not None
    return rows.operator_token(row)


async def active_token(db: Executor, token_hash: bytes) -> OperatorToken | None:
    row = await db.fetchrow(_ACTIVE_TOKEN, token_hash)
    return None if row is None else rows.operator_token(row)


async def revoke_token(conn: Connection, token_id: str) -> OperatorToken | None:
    """None when there is no such token or it was revoked already."""
    row = await conn.fetchrow(_REVOKE_TOKEN, token_id)
    return None if row is None else rows.operator_token(row)


async def list_tokens(db: Executor) -> list[OperatorToken]:
    return [rows.operator_token(r) for r in await db.fetch(_LIST_TOKENS)]


# ---- console sessions -----------------------------------------------------------------------


async def insert_session(
    conn: Connection,
    session_id: str,
    token_hash: bytes,
    operator_id: str,
    csrf_token: str,
    source_ip: str | None,
    lifetime_s: float,
) -> datetime:
    """A new session (the operator's last sign-in is now); returns its absolute end."""
    row = await conn.fetchrow(
        _INSERT_SESSION, session_id, token_hash, operator_id, csrf_token, source_ip, lifetime_s
    )
    assert row is not None
    expires: datetime = row["expires_at"]
    return expires


async def live_session(
    db: Executor, token_hash: bytes, idle_s: float, touch_after_s: float
) -> OperatorSession | None:
    """The live session whose cookie hashes to `token_hash` (see `live_operator_session`)."""
    row = await db.fetchrow(_LIVE_SESSION, token_hash, idle_s, touch_after_s)
    return None if row is None else rows.operator_session(row)


async def end_session(conn: Connection, session_id: str) -> str | None:
    """End a session; its operator's id, or None when it had ended already."""
    row = await conn.fetchrow(_END_SESSION, session_id)
    return None if row is None else str(row["operator_id"])


# ---- the sign-in throttle -------------------------------------------------------------------


async def lock_sign_in_counters(conn: Connection, keys: Sequence[str]) -> list[SignInCounter]:
    """The counters of `keys` (created when missing), locked until the transaction ends."""
    found = await conn.fetch(_LOCK_SIGN_IN_FAILURES, list(keys))
    return [rows.sign_in_counter(r) for r in found]


async def record_sign_in_failure(
    conn: Connection,
    key: str,
    failures: int,
    window_start: datetime,
    locked_until: datetime | None,
) -> None:
    """`key` now counts `failures` in the window that started at `window_start`."""
    await conn.execute(_RECORD_SIGN_IN_FAILURE, key, failures, window_start, locked_until)


async def clear_sign_in_failures(conn: Connection, key: str) -> None:
    await conn.execute(_CLEAR_SIGN_IN_FAILURES, key)


async def purge_sign_in_failures(db: Executor, older_than_s: float) -> None:
    await db.execute(_PURGE_SIGN_IN_FAILURES, older_than_s)
