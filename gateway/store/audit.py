"""The audit log: appending an entry to the hash chain, reading entries back. Statements:
`sql/audit.sql`.

Appends from every process form one chain: `append` takes a transaction-scoped advisory lock,
then reads the last entry and writes the next. The lock is held until the caller's transaction
commits, so append as the LAST statement of a transaction (the change it records first): the
lock then serialises only the commit of audited changes, and a transaction never holds it
while it waits for another lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from gateway.domain.audit import GENESIS_HASH, AuditDraft, AuditEntry, seal
from gateway.store import rows
from gateway.store.db import Connection, Executor
from gateway.store.queries import query

_LOCK_CHAIN = query("lock_audit_chain")
_CHAIN_HEAD = query("audit_chain_head")
_INSERT_ENTRY = query("insert_audit_entry")
_LIST_ENTRIES = query("list_audit_entries")
_ALL_ENTRIES = query("all_audit_entries")
_LAST_FILE_LOAD = query("last_file_load")
_PREFETCH = 1000


async def append(conn: Connection, draft: AuditDraft) -> AuditEntry:
    """Write `draft` as the chain's next entry, in the caller's transaction."""
    assert conn.is_in_transaction(), "an audit entry is written in the change's transaction"
    await conn.execute(_LOCK_CHAIN)
    head = await conn.fetchrow(_CHAIN_HEAD)
    now = datetime.now(UTC)
    if head is None:
        entry_id, prev_hash = 1, GENESIS_HASH
    else:
        entry_id, prev_hash = head["id"] + 1, head["hash"]
        now = max(now, head["at"])  # never before the entry it follows (clocks of processes)
    entry = seal(draft, entry_id, now, prev_hash)
    await conn.execute(
        _INSERT_ENTRY,
        entry.id,
        entry.at,
        entry.actor,
        entry.role,
        entry.action,
        entry.target,
        entry.before,
        entry.after,
        entry.reason,
        entry.source_ip,
        entry.request_id,
        entry.prev_hash,
        entry.hash,
    )
    return entry


async def list_entries(
    db: Executor,
    *,
    actor: str | None,
    action: str | None,
    target: str | None,
    at_from: datetime | None,
    at_to: datetime | None,
    limit: int,
    before_id: int | None,
) -> list[AuditEntry]:
    """Newest first; `action` is a name or a prefix ending in `.` (`operator.`)."""
    found = await db.fetch(_LIST_ENTRIES, actor, action, target, at_from, at_to, limit, before_id)
    return [rows.audit_entry(r) for r in found]


async def all_entries(conn: Connection) -> AsyncIterator[AuditEntry]:
    """The whole log in chain order, streamed (call inside a transaction)."""
    async for row in conn.cursor(_ALL_ENTRIES, prefetch=_PREFETCH):
        yield rows.audit_entry(row)


async def last_file_load(db: Executor, action: str, path: str) -> AuditEntry | None:
    row = await db.fetchrow(_LAST_FILE_LOAD, action, path)
    return None if row is None else rows.audit_entry(row)
