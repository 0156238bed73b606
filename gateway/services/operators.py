"""Operators (API.md §4.1): people with an account and services with a token, and who an
`/admin/…` request (or, later, a console page) comes from.

- Passwords are hashed with argon2id (argon2-cffi's defaults: 64 MiB, 3 passes), in a thread
  so that the event loop keeps serving meanwhile; a hash made with weaker parameters is
  replaced at the next sign-in.
- Service tokens are 256 random bits (`gwop_…`); only their SHA-256 is stored. A fast hash is
  enough there: a slow one protects a human's guessable password from a guessing attack on a
  stolen hash, but no guess finds a 256-bit random value, so a stolen SHA-256 reveals nothing,
  while a slow hash would add its cost to every request the token makes.
- Console sessions live in PostgreSQL: the cookie holds 256 random bits, the table their
  SHA-256 (a read of the table gives no usable session), and a CSRF token per session. A
  session ends at sign-out, after `session_idle_s` without use, `session_max_s` after the
  sign-in, or when its operator is disabled.
- Sign-in is throttled per account (known or not, so that the answer says nothing of which
  accounts exist) and per source address: after two failures in a window each further attempt
  waits twice as long as the one before (up to 30 s), and `sign_in_max_failures` (per account)
  or `sign_in_address_max_failures` (per address) lock it for `sign_in_lockout_s`. Unknown
  accounts cost the same argon2 verification as known ones. Every sign-in that is checked,
  failed or not, is in the audit log; an attempt refused unchecked (slowed or locked) is only
  logged.
- `GATEWAY_ADMIN_TOKEN`, when set, is the `admin-token` identity with the `admin` role.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import argon2
import structlog
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import SecretStr

from gateway.domain.errors import InvalidRequest, SignInRefused
from gateway.domain.ids import new_id
from gateway.domain.permissions import ADMIN_TOKEN_ACTOR, Identity, IdentityKind, Role
from gateway.domain.records import Operator, OperatorSession, OperatorToken, SignInCounter
from gateway.services import audit
from gateway.services.audit import Actor
from gateway.store import operators as store
from gateway.store.db import Connection, Pool

TOKEN_PREFIX = "gwop_"  # noqa: S105 - a prefix, not a secret
"""Operator tokens start with this (told apart from GATEWAY_ADMIN_TOKEN and garbage without a
database lookup)."""
SESSION_COOKIE = "gw_session"
"""The console's session cookie (the console sets it; `/admin/…` accepts it too)."""
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
SESSION_TOUCH_S = 60.0
"""A session's last use is written at most this often (idle time is exact to this)."""
SLOW_AFTER_FAILURES = 2
MAX_SLOWDOWN_S = 30.0

log = structlog.get_logger("operators")

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PASSWORDS = argon2.PasswordHasher()  # argon2id


class OperatorError(InvalidRequest):
    """An operator's command that cannot be done as asked (the command line prints it)."""


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        raise OperatorError(f"{email!r} is not an email address")
    return email


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise OperatorError(
            f"unknown role {value!r}: one of {', '.join(r.value for r in Role)}"
        ) from None


def check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise OperatorError(
            f"a password is {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )


def generate_password() -> str:
    """20 characters, about 120 random bits."""
    return secrets.token_urlsafe(15)


def hash_password(password: str) -> str:
    return _PASSWORDS.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _PASSWORDS.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@lru_cache(maxsize=1)
def _decoy_hash() -> str:
    """What an unknown account's password is checked against (it costs the same)."""
    return hash_password(secrets.token_urlsafe(16))


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def operator_identity(operator: Operator, session_id: str | None = None) -> Identity:
    return Identity(IdentityKind.OPERATOR, operator.id, operator.email, operator.role, session_id)


def token_identity(token: OperatorToken) -> Identity:
    return Identity(IdentityKind.TOKEN, token.id, f"token:{token.id}", token.role)


ADMIN_TOKEN_IDENTITY = Identity(
    IdentityKind.ADMIN_TOKEN, ADMIN_TOKEN_ACTOR, ADMIN_TOKEN_ACTOR, Role.ADMIN
)


# ---- the sign-in throttle (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    account_max_failures: int = 5
    address_max_failures: int = 20
    lockout_s: float = 900.0
    """The lock-out, and the window failures are counted in."""


def wait_before_attempt(counter: SignInCounter, policy: ThrottlePolicy) -> int | None:
    """Seconds before `counter`'s key may try again (None: now): the rest of a lock-out, or of
    the slow-down after repeated failures."""
    now = counter.now
    if counter.locked_until is not None and counter.locked_until > now:
        return math.ceil((counter.locked_until - now).total_seconds())
    in_window = counter.first_at > now - timedelta(seconds=policy.lockout_s)
    if not in_window or counter.failures < SLOW_AFTER_FAILURES:
        return None
    delay = min(2.0 ** (counter.failures - SLOW_AFTER_FAILURES), MAX_SLOWDOWN_S)
    wait = (counter.last_at - now).total_seconds() + delay
    return math.ceil(wait) if wait > 0 else None


def after_failure(
    counter: SignInCounter, max_failures: int, policy: ThrottlePolicy
) -> tuple[int, datetime, datetime | None]:
    """(failures, window start, locked until) once one more failure is counted."""
    now = counter.now
    in_window = counter.first_at > now - timedelta(seconds=policy.lockout_s)
    failures = counter.failures + 1 if in_window else 1
    first_at = counter.first_at if in_window else now
    locked = now + timedelta(seconds=policy.lockout_s) if failures >= max_failures else None
    return failures, first_at, locked


def _account_key(email: str) -> str:
    return f"account:{email}"


def _address_key(source_ip: str) -> str:
    return f"address:{source_ip}"


# ---- the service ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token_id: str
    name: str
    role: Role
    token: str
    """Shown once; the gateway keeps only its SHA-256."""

    def as_dict(self) -> dict[str, str]:
        return {
            "token_id": self.token_id,
            "name": self.name,
            "role": self.role.value,
            "token": self.token,
        }


@dataclass(frozen=True, slots=True)
class NewSession:
    """A console session just begun: the cookie's value is known only here."""

    session_id: str
    cookie_value: str
    csrf_token: str
    expires_at: datetime
    identity: Identity


class OperatorService:
    def __init__(
        self,
        pool: Pool,
        *,
        admin_token: SecretStr | None = None,
        session_idle_s: float = 1800.0,
        session_max_s: float = 43200.0,
        throttle: ThrottlePolicy | None = None,
    ) -> None:
        self.pool = pool
        self._admin_token = None if admin_token is None else admin_token.get_secret_value()
        self.session_idle_s = session_idle_s
        self.session_max_s = session_max_s
        self.throttle = throttle or ThrottlePolicy()

    # ---- accounts and tokens ----------------------------------------------------------------

    async def create_operator(
        self, email: str, role: Role, password: str, actor: Actor
    ) -> Operator:
        email = normalize_email(email)
        check_password(password)
        password_hash = await asyncio.to_thread(hash_password, password)
        async with self.pool.acquire() as conn, conn.transaction():
            created = await store.insert_operator(conn, new_id("op"), email, role, password_hash)
            if created is None:
                raise OperatorError(f"there is an operator {email} already")
            await audit.record(
                conn,
                actor,
                "operator.create",
                f"operator:{created.id}",
                after={"email": email, "role": role.value},
            )
        return created

    async def disable_operator(self, email: str, actor: Actor, reason: str | None) -> Operator:
        """Disable an account and end its sessions (its requests get 401 from now on)."""
        email = normalize_email(email)
        async with self.pool.acquire() as conn, conn.transaction():
            found = await store.lock_operator_by_email(conn, email)
            if found is None:
                raise OperatorError(f"no operator {email}")
            disabled = await store.disable_operator(conn, found.id)
            if disabled is None:
                raise OperatorError(f"operator {email} is disabled already")
            await audit.record(
                conn,
                actor,
                "operator.disable",
                f"operator:{found.id}",
                before={"email": email, "disabled": False},
                after={"email": email, "disabled": True},
                reason=reason,
            )
        return disabled

    async def create_token(self, name: str, role: Role, actor: Actor) -> IssuedToken:
        name = name.strip()
        if not 1 <= len(name) <= 128:
            raise OperatorError("a token's name is 1 to 128 characters")
        token = new_token()
        async with self.pool.acquire() as conn, conn.transaction():
            created = await store.insert_token(conn, new_id("tok"), name, role, token_digest(token))
            await audit.record(
                conn,
                actor,
                "operator_token.create",
                f"token:{created.id}",
                after={"name": name, "role": role.value},
            )
        return IssuedToken(created.id, name, role, token)

    async def revoke_token(self, token_id: str, actor: Actor, reason: str | None) -> OperatorToken:
        async with self.pool.acquire() as conn, conn.transaction():
            revoked = await store.revoke_token(conn, token_id)
            if revoked is None:
                raise OperatorError(f"no active token {token_id}")
            await audit.record(
                conn,
                actor,
                "operator_token.revoke",
                f"token:{token_id}",
                before={"name": revoked.name, "role": revoked.role.value, "revoked": False},
                after={"name": revoked.name, "role": revoked.role.value, "revoked": True},
                reason=reason,
            )
        return revoked

    async def list_operators(self) -> list[Operator]:
        return await store.list_operators(self.pool)

    async def list_tokens(self) -> list[OperatorToken]:
        return await store.list_tokens(self.pool)

    # ---- who a request comes from ----------------------------------------------------------

    async def bearer_identity(self, token: str) -> Identity | None:
        """GATEWAY_ADMIN_TOKEN, or a token that is not revoked; None for anything else."""
        admin = self._admin_token
        if admin is not None and hmac.compare_digest(token.encode(), admin.encode()):
            return ADMIN_TOKEN_IDENTITY
        if not token.startswith(TOKEN_PREFIX):
            return None
        found = await store.active_token(self.pool, token_digest(token))
        return None if found is None else token_identity(found)

    async def live_session(self, cookie_value: str) -> OperatorSession | None:
        """The session a console cookie names, while it lives (its operator not disabled)."""
        if not cookie_value:
            return None
        return await store.live_session(
            self.pool, token_digest(cookie_value), self.session_idle_s, SESSION_TOUCH_S
        )

    async def session_identity(self, cookie_value: str) -> Identity | None:
        """Who a console cookie names, while its session lives."""
        session = await self.live_session(cookie_value)
        return None if session is None else self.session_identity_of(session)

    @staticmethod
    def session_identity_of(session: OperatorSession) -> Identity:
        return operator_identity(session.operator, session.id)

    @staticmethod
    def csrf_matches(session: OperatorSession, presented: str | None) -> bool:
        """Whether a form or header carries the session's CSRF token."""
        return presented is not None and hmac.compare_digest(
            presented.encode(), session.csrf_token.encode()
        )

    # ---- sessions ---------------------------------------------------------------------------

    async def _begin_session(
        self, conn: Connection, operator: Operator, source_ip: str | None
    ) -> NewSession:
        cookie_value = secrets.token_urlsafe(32)
        session_id = new_id("ses")
        csrf_token = secrets.token_urlsafe(32)
        expires_at = await store.insert_session(
            conn,
            session_id,
            token_digest(cookie_value),
            operator.id,
            csrf_token,
            source_ip,
            self.session_max_s,
        )
        return NewSession(
            session_id,
            cookie_value,
            csrf_token,
            expires_at,
            operator_identity(operator, session_id),
        )

    async def create_session(
        self, operator: Operator, actor: Actor, source_ip: str | None = None
    ) -> NewSession:
        """A session for an operator already authenticated (sign-in is `sign_in`)."""
        if operator.disabled_at is not None:
            raise OperatorError(f"operator {operator.email} is disabled")
        async with self.pool.acquire() as conn, conn.transaction():
            session = await self._begin_session(conn, operator, source_ip)
            await audit.record(
                conn,
                actor,
                "operator.session_create",
                f"operator:{operator.id}",
                after={"session_id": session.session_id},
            )
        return session

    async def sign_out(self, session_id: str, actor: Actor) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            operator_id = await store.end_session(conn, session_id)
            if operator_id is not None:
                await audit.record(
                    conn,
                    actor,
                    "operator.sign_out",
                    f"operator:{operator_id}",
                    after={"session_id": session_id},
                )

    async def sign_in(
        self, email: str, password: str, source_ip: str | None, request_id: str | None
    ) -> NewSession:
        """A console sign-in: a new session, or SignInRefused (which never says whether the
        account exists). Slowed and locked as the module says; audited either way."""
        attempted = email.strip().lower()[:254]
        keys = [_account_key(attempted)]
        if source_ip is not None:
            keys.append(_address_key(source_ip))
        policy = self.throttle
        async with self.pool.acquire() as conn, conn.transaction():
            counters = {c.key: c for c in await store.lock_sign_in_counters(conn, keys)}
            waits = [w for c in counters.values() if (w := wait_before_attempt(c, policy))]
            operator = await store.operator_by_email(conn, attempted)
            actor = Actor(
                attempted,
                None if operator is None else operator.role.value,
                source_ip,
                request_id,
            )
            target = None if operator is None else f"operator:{operator.id}"
            if waits:
                # refused unheard, and logged rather than audited: an attempt that is not
                # checked writes nothing, so hammering the form cannot flood the audit log
                log.warning("sign_in_throttled", source_ip=source_ip, retry_after_s=max(waits))
                refusal = SignInRefused(
                    "Too many failed sign-ins: try again later.", retry_after_s=max(waits)
                )
            else:
                stored = _decoy_hash() if operator is None else operator.password_hash
                matches = await asyncio.to_thread(password_matches, stored, password)
                if matches and operator is not None and operator.disabled_at is None:
                    await store.clear_sign_in_failures(conn, _account_key(attempted))
                    if _PASSWORDS.check_needs_rehash(stored):
                        new_hash = await asyncio.to_thread(hash_password, password)
                        await store.set_password_hash(conn, operator.id, new_hash)
                    session = await self._begin_session(conn, operator, source_ip)
                    await audit.record(
                        conn,
                        actor,
                        "operator.sign_in",
                        target,
                        after={"session_id": session.session_id},
                    )
                    return session
                why = (
                    "unknown_account"
                    if operator is None
                    else ("disabled" if matches else "wrong_password")
                )
                for key, counter in counters.items():
                    limit = (
                        policy.account_max_failures
                        if key.startswith("account:")
                        else policy.address_max_failures
                    )
                    await store.record_sign_in_failure(
                        conn, key, *after_failure(counter, limit, policy)
                    )
                refusal = SignInRefused("Wrong email or password, or the account is disabled.")
                await audit.record(
                    conn, actor, "operator.sign_in_failed", target, after={"why": why}
                )
        raise refusal

    async def purge_sign_in_failures(self) -> None:
        """Forget throttle rows whose window and lock-out are over."""
        await store.purge_sign_in_failures(self.pool, self.throttle.lockout_s)
