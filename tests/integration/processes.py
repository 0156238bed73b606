"""A gateway command run as a process until it serves (test_production_serve.py,
test_demo.py)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures import ROOT


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` (output to `log`) until its /readyz at GATEWAY_PORT answers 200, yield it,
    then stop it as Ctrl+C does. Fails with the log when it exits or is not ready in 60 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['GATEWAY_PORT']}/readyz"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
