"""The audit log's entries and their hash chain (API.md §4.1). Pure.

Each entry stores `prev_hash`, the hash of the entry before it (`GENESIS_HASH` for the first),
and `hash`: SHA-256 (hex) over the canonical serialization of its fields and `prev_hash` —
the JSON of one object with sorted keys, no whitespace, UTF-8, the time as RFC 3339 in UTC to
the microsecond. An entry altered after it was written no longer matches its hash; one removed
(or inserted) breaks the `prev_hash` of the entry after it, and the ids, given out one by one
under the writers' lock, leave a gap. What a chain alone cannot show is its last entries
removed: `gateway audit verify` prints the last id and hash, to be kept elsewhere and compared.

`before` and `after` hold JSON of strings, integers, booleans, null, lists and objects:
floats are refused (money is integers here), so that what PostgreSQL's jsonb gives back
serializes to the same bytes that were hashed."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

GENESIS_HASH = "0" * 64
"""The `prev_hash` of the first entry."""

MAX_DIFF_CHARS = 200_000
"""A diff longer than this is cut (the file's SHA-256 still names the whole of it)."""

JsonValue = Any
"""What `before` and `after` may hold (see `check_json`)."""


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An entry before the log gives it its id, time and place in the chain."""

    actor: str
    role: str | None
    action: str
    target: str | None = None
    before: JsonValue = None
    after: JsonValue = None
    reason: str | None = None
    source_ip: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    role: str | None
    action: str
    target: str | None
    before: JsonValue
    after: JsonValue
    reason: str | None
    source_ip: str | None
    request_id: str | None
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """The entry as `GET /admin/audit` shows it."""
        return {**_fields(self), "hash": self.hash}


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _fields(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": _timestamp(entry.at),
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
        "reason": entry.reason,
        "source_ip": entry.source_ip,
        "request_id": entry.request_id,
        "prev_hash": entry.prev_hash,
    }


def check_json(value: JsonValue, where: str = "value") -> None:
    """Raise TypeError unless `value` is JSON the chain can hash stably (no floats; object
    keys are strings)."""
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise TypeError(f"{where}: integer out of the 64-bit range")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: object keys must be strings")
            check_json(item, f"{where}.{key}")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not stored in the audit log")


def canonical(entry: AuditEntry) -> bytes:
    """The bytes an entry's hash is taken over: every field but `hash`."""
    return orjson.dumps(_fields(entry), option=orjson.OPT_SORT_KEYS)


def entry_hash(entry: AuditEntry) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def seal(draft: AuditDraft, entry_id: int, at: datetime, prev_hash: str) -> AuditEntry:
    """The entry that follows `prev_hash` in the chain, with its hash."""
    check_json(draft.before, "before")
    check_json(draft.after, "after")
    unsealed = AuditEntry(
        id=entry_id,
        at=at,
        actor=draft.actor,
        role=draft.role,
        action=draft.action,
        target=draft.target,
        before=draft.before,
        after=draft.after,
        reason=draft.reason,
        source_ip=draft.source_ip,
        request_id=draft.request_id,
        prev_hash=prev_hash,
        hash="",
    )
    return dataclasses.replace(unsealed, hash=entry_hash(unsealed))


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first entry at which the chain is not whole, and why."""

    entry_id: int
    problem: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    entries: int
    last_id: int | None
    last_hash: str
    broken: ChainBreak | None

    @property
    def whole(self) -> bool:
        return self.broken is None


class ChainChecker:
    """Checks entries fed in id order, one at a time (the log is streamed, never held)."""

    def __init__(self) -> None:
        self.entries = 0
        self.last_id: int | None = None
        self.last_hash = GENESIS_HASH
        self.broken: ChainBreak | None = None

    def feed(self, entry: AuditEntry) -> bool:
        """False once the chain is broken (at this entry or before)."""
        if self.broken is not None:
            return False
        expected_id = 1 if self.last_id is None else self.last_id + 1
        problem = None
        if entry.id != expected_id:
            problem = f"entry {expected_id} is missing (removed): the next one is {entry.id}"
        elif entry.prev_hash != self.last_hash:
            problem = "its prev_hash is not the hash of the entry before it"
        elif entry_hash(entry) != entry.hash:
            problem = "its content does not match its hash (altered after it was written)"
        if problem is not None:
            self.broken = ChainBreak(entry.id, problem)
            return False
        self.entries += 1
        self.last_id = entry.id
        self.last_hash = entry.hash
        return True

    def report(self) -> ChainReport:
        return ChainReport(self.entries, self.last_id, self.last_hash, self.broken)


def verify_chain(entries: Iterable[AuditEntry]) -> ChainReport:
    checker = ChainChecker()
    for entry in entries:
        if not checker.feed(entry):
            break
    return checker.report()


def unified_diff(before: bytes | None, after: bytes, before_name: str, after_name: str) -> str:
    """The change from one version of a text file to the next, as `diff -u` shows it (the
    whole file as added when there is no earlier version)."""
    old = [] if before is None else before.decode("utf-8", "replace").splitlines(keepends=True)
    new = after.decode("utf-8", "replace").splitlines(keepends=True)
    text = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
        for line in difflib.unified_diff(old, new, before_name, after_name)
    )
    if len(text) > MAX_DIFF_CHARS:
        text = text[:MAX_DIFF_CHARS] + f"\n… (cut at {MAX_DIFF_CHARS} characters)\n"
    return text


# ---- rules files loaded and refused ------------------------------------------------------------


class WatchedFile(Protocol):
    """What `FileWatch` reads of a rules file's holder (`routing.files.FileHolder`)."""

    @property
    def path(self) -> Path: ...
    @property
    def last_read(self) -> bytes | None: ...
    @property
    def reloads(self) -> int: ...
    @property
    def reload_failures(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def current(self) -> _Versioned: ...


class _Versioned(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def version(self) -> str: ...


@dataclass(frozen=True, slots=True)
class FileEvent:
    """A rules file this process loaded or refused."""

    kind: str
    """`routing` or `risk`."""
    loaded: bool
    path: str
    sha256: str | None
    """Of the bytes loaded or refused (None: the file could not be read)."""
    on_start: bool
    version: str | None = None
    previous_sha256: str | None = None
    """Of the file in force before (loads only)."""
    diff: str | None = None
    """Unified diff from the file in force before (loads only)."""
    content: str | None = None
    """The file loaded, whole: the next process to start diffs against it."""
    error: str | None = None
    """Why it was refused."""

    @property
    def action(self) -> str:
        return file_action(self.kind, self.loaded)

    def after(self) -> dict[str, Any]:
        """What the audit entry records as `after`."""
        if not self.loaded:
            return {"sha256": self.sha256, "on_start": self.on_start, "error": self.error}
        return {
            "sha256": self.sha256,
            "version": self.version,
            "on_start": self.on_start,
            "diff": self.diff,
            "content": self.content,
        }


def file_action(kind: str, loaded: bool) -> str:
    return f"{kind}.{'file_loaded' if loaded else 'file_refused'}"


def _sha256(raw: bytes | None) -> str | None:
    return None if raw is None else hashlib.sha256(raw).hexdigest()


class FileWatch:
    """Turns what a rules file's holder did into `FileEvent`s: call `poll()` right after each
    reload (it compares the holder's counters with the last poll), `start_event` once at
    start-up, and `take()` to collect what is waiting to be written."""

    def __init__(self, kind: str, holder: WatchedFile) -> None:
        self.kind = kind
        self.holder = holder
        self._reloads = holder.reloads
        self._failures = holder.reload_failures
        first = holder.last_read
        self._in_force = first if _sha256(first) == holder.current.digest else None
        self._digest = holder.current.digest
        self._pending: list[FileEvent] = []

    @property
    def path(self) -> str:
        return str(self.holder.path)

    def _loaded(
        self, previous: bytes | None, previous_sha: str | None, on_start: bool
    ) -> FileEvent:
        """The file now in force, loaded over the one whose bytes and SHA-256 are given
        (bytes None: not known; SHA-256 None: there was none)."""
        current = self.holder.current
        raw = self._in_force
        diff = None  # not known: the new bytes or the old ones are missing
        if raw is not None and previous_sha == current.digest:
            diff = ""
        elif raw is not None and (previous_sha is None or previous is not None):
            diff = unified_diff(previous, raw, f"{self.path} (before)", self.path)
        return FileEvent(
            kind=self.kind,
            loaded=True,
            path=self.path,
            sha256=current.digest,
            on_start=on_start,
            version=current.version,
            previous_sha256=previous_sha,
            diff=diff,
            content=None if raw is None else raw.decode("utf-8", "replace"),
        )

    def start_event(self, previous: bytes | None, previous_sha: str | None) -> FileEvent:
        """The file this process started with, against the one last recorded as loaded (by
        any process; none: the whole file is new)."""
        return self._loaded(previous, previous_sha, on_start=True)

    def poll(self) -> None:
        """Note what the holder did since the last poll: a load or a refusal."""
        holder = self.holder
        if holder.reloads > self._reloads:
            previous, previous_sha = self._in_force, self._digest
            raw = holder.last_read
            self._in_force = raw if _sha256(raw) == holder.current.digest else None
            self._digest = holder.current.digest
            self._pending.append(self._loaded(previous, previous_sha, on_start=False))
        if holder.reload_failures > self._failures:
            self._pending.append(
                FileEvent(
                    kind=self.kind,
                    loaded=False,
                    path=self.path,
                    sha256=_sha256(holder.last_read),
                    on_start=False,
                    error=holder.last_error,
                )
            )
        self._reloads, self._failures = holder.reloads, holder.reload_failures

    def take(self) -> list[FileEvent]:
        taken, self._pending = self._pending, []
        return taken

    def put_back(self, events: list[FileEvent]) -> None:
        """Events that could not be written, kept for the next try."""
        self._pending[:0] = events
