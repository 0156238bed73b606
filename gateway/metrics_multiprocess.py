"""Prometheus multiprocess mode, for several gateway processes on one host (`GATEWAY_REUSE_PORT`
behind one port, or one port each): with `PROMETHEUS_MULTIPROC_DIR` set, every process writes
its metric values to files in that directory and a scrape of any process's /metrics sums
them all (`gateway.metrics.exposition`).

`prepare()` runs before any metric exists (`gateway serve` calls it before importing the
app). The first process to start, when no other is alive, empties the directory, so that
counters start from zero with the service; a process that starts beside live ones keeps their
files. Every process holds a shared lock on `<dir>/.alive` for its lifetime (released by the
kernel however it ends), which is how the next one knows. Dead processes are marked dead
(their live gauges dropped; their counters kept, so that sums never go backwards) when a
process starts, on every scrape, and by each process itself at a clean exit.

Imports nothing from prometheus_client at import time: the library picks its mode when it is
first imported, from the environment this module checks.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
_ALIVE = ".alive"
_SETUP = ".setup.lock"

_alive_fd: int | None = None
"""This process's shared lock on `.alive`, held until it exits."""


def directory() -> Path | None:
    """The multiprocess directory, or None in single-process mode."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def prepare() -> None:
    """Get the directory ready for this process (see the module docstring). Nothing to do in
    single-process mode. Raises RuntimeError if the metrics already exist."""
    global _alive_fd
    folder = directory()
    if folder is None or _alive_fd is not None:
        return
    if "gateway.metrics" in sys.modules:
        raise RuntimeError(f"{ENV}: prepare the directory before gateway.metrics is imported")
    folder.mkdir(parents=True, exist_ok=True)
    setup = os.open(folder / _SETUP, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(setup, fcntl.LOCK_EX)  # one process at a time between here and the end
        alive = os.open(folder / _ALIVE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # other gateway processes are alive: keep their files
            fcntl.flock(alive, fcntl.LOCK_SH)
            mark_dead_processes(folder)
        else:  # no other process alive: start the service's counts afresh
            for entry in folder.glob("*.db"):
                entry.unlink()
            fcntl.flock(alive, fcntl.LOCK_SH)
        _alive_fd = alive
    finally:
        os.close(setup)  # releases the setup lock
    atexit.register(_exit, os.getpid(), folder)


def mark_dead_processes(folder: Path) -> list[int]:
    """Mark dead every process that left metric files but is no longer running; returns
    their pids."""
    from prometheus_client import multiprocess

    pids = set()
    for entry in folder.glob("*_*.db"):
        tail = entry.stem.rsplit("_", 1)[1]
        if tail.isdigit():
            pids.add(int(tail))
    dead = [pid for pid in sorted(pids) if not _running(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    return dead


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _exit(pid: int, folder: Path) -> None:
    if os.getpid() != pid:  # a forked child inherits atexit: only the owner marks itself
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
