"""The demo's private files (gateway/cli/serve.py): the var dir 0700 whatever it was, and the
demo merchant's credentials in a file that is 0600 from its first byte — under a umask that
would make a new file world-readable — and never seen half written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.serve import private_dir, write_private


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_the_var_dir_is_made_private_whether_new_or_not(tmp_path: Path, open_umask: None) -> None:
    new = tmp_path / "a" / "var"
    private_dir(new)
    assert stat.S_IMODE(new.stat().st_mode) == 0o700
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    private_dir(existing)
    assert stat.S_IMODE(existing.stat().st_mode) == 0o700


def test_the_credentials_are_never_on_disk_in_a_file_others_may_read(
    tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "demo-merchant.json"
    seen: list[tuple[str, int, bytes]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the content is written: what does the directory show?
        real_fsync(fd)
        for entry in tmp_path.iterdir():
            seen.append((entry.name, stat.S_IMODE(entry.stat().st_mode), entry.read_bytes()))

    monkeypatch.setattr(os, "fsync", fsync)
    write_private(target, '{"secret": "s"}')
    assert seen and all(mode == 0o600 for _, mode, _ in seen), seen
    assert target.name not in [name for name, _, _ in seen]  # renamed into place once whole
    assert target.read_text() == '{"secret": "s"}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_private(tmp_path / "demo-merchant.json", "{}")
    assert list(tmp_path.iterdir()) == []
