"""The audit log (API.md §4.1): who did what, written in the same transaction as the change it
records; the rules files each process loads or refuses; reading entries back; checking the
chain (`gateway audit verify`).

Actors: an operator's email, `token:<id>`, `admin-token` (`gateway.domain.permissions`),
`cli:<os user>` for the command line, and `gateway:<host>:<pid>` for what a gateway process
does by itself — loading or refusing a routing or risk file. Each process writes its own
entries for the files it loads (no de-duplication across processes: an entry says which
process runs which file, and since when), each with the file's SHA-256, its content and a
unified diff against the file it replaced (at start-up: the one last recorded as loaded).
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from gateway.domain.audit import (
    AuditDraft,
    AuditEntry,
    ChainChecker,
    ChainReport,
    FileEvent,
    FileWatch,
    JsonValue,
    file_action,
)
from gateway.domain.permissions import Identity
from gateway.store import audit as store
from gateway.store.db import Connection, Pool

log = structlog.get_logger("audit")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who an entry names, and from where."""

    name: str
    role: str | None
    source_ip: str | None = None
    request_id: str | None = None

    @classmethod
    def of(cls, identity: Identity, source_ip: str | None, request_id: str | None) -> Actor:
        return cls(identity.actor, identity.role.value, source_ip, request_id)

    def draft(
        self,
        action: str,
        target: str | None = None,
        *,
        before: JsonValue = None,
        after: JsonValue = None,
        reason: str | None = None,
    ) -> AuditDraft:
        return AuditDraft(
            actor=self.name,
            role=self.role,
            action=action,
            target=target,
            before=before,
            after=after,
            reason=reason,
            source_ip=self.source_ip,
            request_id=self.request_id,
        )


def cli_actor(request_id: str | None = None) -> Actor:
    """The command line, as the OS user who runs it (it has no role: it holds the database's
    credentials)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid-{os.getuid()}"
    return Actor(f"cli:{user}", None, None, request_id)


def process_actor(request_id: str | None = None) -> Actor:
    """This gateway process, for what it does by itself."""
    return Actor(f"gateway:{socket.gethostname()}:{os.getpid()}", None, None, request_id)


async def record(
    conn: Connection,
    actor: Actor,
    action: str,
    target: str | None = None,
    *,
    before: JsonValue = None,
    after: JsonValue = None,
    reason: str | None = None,
) -> AuditEntry:
    """Append an entry in the caller's transaction (its last statement: see
    `gateway.store.audit`)."""
    return await store.append(
        conn, actor.draft(action, target, before=before, after=after, reason=reason)
    )


async def record_alone(
    pool: Pool,
    actor: Actor,
    action: str,
    target: str | None = None,
    *,
    before: JsonValue = None,
    after: JsonValue = None,
    reason: str | None = None,
) -> AuditEntry:
    """Append an entry in a transaction of its own (a change outside the database)."""
    async with pool.acquire() as conn, conn.transaction():
        return await record(conn, actor, action, target, before=before, after=after, reason=reason)


# ---- rules files ------------------------------------------------------------------------------


def file_draft(actor: Actor, event: FileEvent) -> AuditDraft:
    before = None if event.previous_sha256 is None else {"sha256": event.previous_sha256}
    return actor.draft(event.action, event.path, before=before, after=event.after())


async def record_file_events(conn: Connection, actor: Actor, events: Sequence[FileEvent]) -> None:
    """The files loaded or refused, in the caller's transaction."""
    for event in events:
        await store.append(conn, file_draft(actor, event))


async def flush_file_events(pool: Pool, watches: Sequence[FileWatch]) -> int:
    """Write what the watches noted since the last flush, as this process; kept for the next
    flush if the database cannot take it now. Returns how many were written."""
    events = [(watch, watch.take()) for watch in watches]
    if not any(taken for _, taken in events):
        return 0
    try:
        async with pool.acquire() as conn, conn.transaction():
            for _, taken in events:
                await record_file_events(conn, process_actor(), taken)
    except BaseException:
        for watch, taken in events:
            watch.put_back(taken)
        raise
    return sum(len(taken) for _, taken in events)


async def record_files_started(pool: Pool, watches: Sequence[FileWatch]) -> None:
    """The files this process starts with, each against the one last recorded as loaded."""
    async with pool.acquire() as conn, conn.transaction():
        for watch in watches:
            previous = await store.last_file_load(conn, file_action(watch.kind, True), watch.path)
            content, sha = None, None
            if previous is not None and isinstance(previous.after, dict):
                text = previous.after.get("content")
                content = text.encode() if isinstance(text, str) else None
                sha = previous.after.get("sha256")
            event = watch.start_event(content, sha if isinstance(sha, str) else None)
            await store.append(conn, file_draft(process_actor(), event))


async def record_refused_at_start(pool: Pool, kind: str, path: str, error: str) -> None:
    """A rules file the process refuses to start with."""
    event = FileEvent(kind, False, path, None, True, error=error)
    await record_alone(pool, process_actor(), event.action, path, after=event.after())


# ---- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditPage:
    entries: list[AuditEntry]
    has_more: bool


async def list_entries(
    pool: Pool,
    *,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    at_from: datetime | None = None,
    at_to: datetime | None = None,
    limit: int = 50,
    starting_after: int | None = None,
) -> AuditPage:
    """Newest first; `starting_after` is the last id of the previous page."""
    found = await store.list_entries(
        pool,
        actor=actor,
        action=action,
        target=target,
        at_from=at_from,
        at_to=at_to,
        limit=limit + 1,
        before_id=starting_after,
    )
    return AuditPage(found[:limit], has_more=len(found) > limit)


async def verify(pool: Pool) -> ChainReport:
    """Check the whole chain, streamed in one snapshot, up to the first break."""
    checker = ChainChecker()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        async for entry in store.all_entries(conn):
            if not checker.feed(entry):
                break
    return checker.report()
