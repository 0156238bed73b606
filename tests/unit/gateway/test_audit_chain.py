"""The audit log's hash chain (pure): each entry's hash covers its fields and the hash before
it, so an altered, removed or inserted entry is found, and named; what a rules file's load
records (its diff against the file before); what `before`/`after` may hold."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.domain.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditEntry,
    FileWatch,
    canonical,
    check_json,
    seal,
    unified_diff,
    verify_chain,
)

T0 = datetime(2025, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


def chain(count: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    for n in range(1, count + 1):
        draft = AuditDraft(
            actor="ops@example.com",
            role="admin",
            action="operator_token.revoke",
            target=f"token:tok_{n}",
            before={"revoked": False},
            after={"revoked": True, "name": "ci ✓"},
            reason="left the company",
            source_ip="203.0.113.9",
            request_id=f"req_{n}",
        )
        prev = entries[-1].hash if entries else GENESIS_HASH
        entries.append(seal(draft, n, T0 + timedelta(seconds=n), prev))
    return entries


def test_a_whole_chain_verifies_and_names_its_last_entry() -> None:
    entries = chain(5)
    report = verify_chain(entries)
    assert report.whole and report.entries == 5
    assert (report.last_id, report.last_hash) == (5, entries[-1].hash)
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert verify_chain([]).whole


def test_the_hash_is_sha256_of_the_canonical_fields() -> None:
    entry = chain(1)[0]
    assert entry.hash == hashlib.sha256(canonical(entry)).hexdigest()
    text = canonical(entry).decode()
    assert '"at":"2025-03-01T08:00:01.123456Z"' in text
    assert '"hash"' not in text  # the hash is not part of what it covers
    assert text.index('"action"') < text.index('"actor"') < text.index('"after"')  # sorted


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "someone@else.example"},
        {"after": {"revoked": False, "name": "ci ✓"}},
        {"reason": None},
        {"at": T0 + timedelta(seconds=3, microseconds=1)},
        {"role": "viewer"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_an_altered_entry_is_named(change: dict[str, object]) -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(entries[2], **change)  # type: ignore[arg-type]
    report = verify_chain(entries)
    assert report.broken is not None and report.broken.entry_id == 3
    assert "altered" in report.broken.problem
    assert report.entries == 2


def test_an_altered_entry_rehashed_breaks_the_next_link() -> None:
    entries = chain(5)
    forged = dataclasses.replace(entries[2], actor="mallory@example.com")
    entries[2] = dataclasses.replace(forged, hash=hashlib.sha256(canonical(forged)).hexdigest())
    report = verify_chain(entries)
    assert report.broken is not None and report.broken.entry_id == 4
    assert "prev_hash" in report.broken.problem


def test_a_removed_entry_is_found_at_the_one_after_it() -> None:
    entries = chain(5)
    del entries[1]
    report = verify_chain(entries)
    assert report.broken is not None and report.broken.entry_id == 3
    assert "entry 2 is missing" in report.broken.problem


def test_before_and_after_hold_json_that_hashes_stably() -> None:
    check_json({"a": [1, "x", None, True, {"b": -(2**63)}]})
    for bad in (1.5, {"a": float("nan")}, {1: "x"}, b"bytes", 2**63):
        with pytest.raises(TypeError):
            check_json(bad)
    with pytest.raises(TypeError):
        seal(AuditDraft("a", None, "x", after={"fee": 0.6}), 1, T0, GENESIS_HASH)


def test_a_unified_diff_of_a_rules_file() -> None:
    diff = unified_diff(b"a: 1\nb: 2\n", b"a: 1\nb: 3", "routing.yaml (before)", "routing.yaml")
    assert diff.splitlines() == [
        "--- routing.yaml (before)",
        "+++ routing.yaml",
        "@@ -1,2 +1,2 @@",
        " a: 1",
        "-b: 2",
        "+b: 3",
        "\\ No newline at end of file",
    ]
    assert unified_diff(None, b"x: 1\n", "a", "b").splitlines()[-1] == "+x: 1"


@dataclasses.dataclass
class Loaded:
    digest: str
    version: str


@dataclasses.dataclass
class Holder:
    """What FileWatch reads of a FileHolder."""

    path: Path
    last_read: bytes | None
    current: Loaded
    reloads: int = 0
    reload_failures: int = 0
    last_error: str | None = None

    def load(self, raw: bytes) -> None:
        digest = hashlib.sha256(raw).hexdigest()
        self.last_read, self.current, self.reloads = (
            raw,
            Loaded(digest, digest[:12]),
            self.reloads + 1,
        )

    def refuse(self, raw: bytes | None, error: str) -> None:
        self.last_read, self.reload_failures, self.last_error = raw, self.reload_failures + 1, error


def test_a_file_watch_records_loads_with_their_diff_and_refusals() -> None:
    first = b"channels: {}\n"
    holder = Holder(
        Path("config/risk.yaml"), first, Loaded(hashlib.sha256(first).hexdigest(), "v1")
    )
    watch = FileWatch("risk", holder)
    started = watch.start_event(None, None)
    assert started.action == "risk.file_loaded" and started.on_start
    assert (
        started.diff
        == "--- config/risk.yaml (before)\n+++ config/risk.yaml\n@@ -0,0 +1 @@\n+channels: {}\n"
    )
    assert watch.start_event(first, started.sha256).diff == ""  # the same file as last time

    watch.poll()
    assert watch.take() == []  # nothing happened
    holder.refuse(b"channels: [\n", "(yaml): line 1: unexpected end")
    second = b"channels: {a: 1}\n"
    watch.poll()
    holder.load(second)
    watch.poll()
    holder.refuse(None, "(file): cannot read config/risk.yaml")
    watch.poll()
    refused, loaded, unreadable = watch.take()
    assert (refused.action, refused.error) == (
        "risk.file_refused",
        "(yaml): line 1: unexpected end",
    )
    assert refused.sha256 == hashlib.sha256(b"channels: [\n").hexdigest()
    assert loaded.action == "risk.file_loaded" and not loaded.on_start
    assert loaded.previous_sha256 == started.sha256
    assert "-channels: {}\n+channels: {a: 1}\n" in (loaded.diff or "")
    assert loaded.content == second.decode()
    assert unreadable.sha256 is None and unreadable.error is not None
    assert watch.take() == []
    watch.put_back([loaded])
    assert watch.take() == [loaded]
