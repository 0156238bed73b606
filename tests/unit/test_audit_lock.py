"""scripts/audit_lock.py, the audit `make lint` runs: a pin with a known advisory fails it, an
advisory service that cannot be reached only warns. The services are a local OSV API on
127.0.0.1 and a proxy address where nothing listens."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pip_audit._service import Dependency, SkippedDependency, VulnerabilityResult
from pip_audit._service.interface import VulnerabilityService

from scripts.audit_lock import audit

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "audit_lock.py"
HASH = "--hash=sha256:" + "0" * 64
LOCK = (
    f"aiohttp==3.12.13 \\\n    {HASH}\n    # via payment-gateway\norjson==3.13.0 \\\n    {HASH}\n"
)
SMUGGLING = {
    "id": "GHSA-9548-qrrj-x5pj",
    "aliases": ["CVE-2025-53643"],
    "summary": "Request smuggling due to incorrect parsing of chunked trailer section",
    "affected": [
        {
            "package": {"name": "aiohttp", "ecosystem": "PyPI"},
            "ranges": [
                {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.12.14"}]}
            ],
        }
    ],
}


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "lock.txt"
    path.write_text(LOCK)
    return path


@dataclass(slots=True)
class LocalOsv:
    """A local OSV `/v1/query` endpoint."""

    url: str
    advisories: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    """What it answers, by package name (nothing for the others)."""
    asked: list[str] = field(default_factory=list)
    """`name==version` of each query it got."""


@pytest.fixture
def osv_api() -> Iterator[LocalOsv]:
    osv = LocalOsv(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = query["package"]["name"]
            osv.asked.append(f"{name}=={query['version']}")
            vulns = osv.advisories.get(name)
            body = json.dumps({"vulns": vulns} if vulns else {}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    osv.url = f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield osv
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_audit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def run_osv_audit(
    url: str, cache: Path, lock: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return run_audit(
        "--service", "osv", "--osv-url", url, "--cache-dir", str(cache), *args, str(lock)
    )


def test_a_pin_with_a_known_advisory_fails_and_is_printed_with_its_fix(
    lock: Path, osv_api: LocalOsv, tmp_path: Path
) -> None:
    osv_api.advisories["aiohttp"] = [SMUGGLING]
    result = run_osv_audit(osv_api.url, tmp_path, lock)
    assert result.returncode == 1, result
    assert (
        "audit: FINDING aiohttp==3.12.13: CVE-2025-53643 (GHSA-9548-qrrj-x5pj); fixed in 3.12.14"
        in result.stdout.splitlines()
    )
    assert sorted(osv_api.asked) == ["aiohttp==3.12.13", "orjson==3.13.0"]


def test_a_lock_without_advisories_passes(lock: Path, osv_api: LocalOsv, tmp_path: Path) -> None:
    result = run_osv_audit(osv_api.url, tmp_path, lock)
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["audit: 2 audited, no known advisory"]
    assert result.stderr == ""


def test_an_advisory_accepted_on_purpose_does_not_fail(
    lock: Path, osv_api: LocalOsv, tmp_path: Path
) -> None:
    osv_api.advisories["aiohttp"] = [SMUGGLING]
    result = run_osv_audit(osv_api.url, tmp_path, lock, "--ignore-vuln", "CVE-2025-53643")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["audit: 2 audited, no known advisory"]


def test_an_unreachable_osv_service_warns_without_failing(lock: Path, tmp_path: Path) -> None:
    result = run_osv_audit(f"http://127.0.0.1:{closed_port()}/v1/query", tmp_path, lock)
    assert result.returncode == 0, result
    assert result.stdout == ""
    assert result.stderr.startswith(
        "audit: WARNING: the advisory service could not be reached, so the lock was NOT audited: "
    )
    assert "Connection refused" in result.stderr


def test_an_unreachable_pypi_service_warns_without_failing(lock: Path, tmp_path: Path) -> None:
    # The default service, reached through a proxy where nothing listens.
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env |= {"HTTPS_PROXY": proxy, "https_proxy": proxy}
    result = run_audit("--cache-dir", str(tmp_path), str(lock), env=env)
    assert result.returncode == 0, result
    assert "audit: WARNING: the advisory service could not be reached" in result.stderr
    assert "ProxyError" in result.stderr


def test_a_pin_without_a_hash_fails(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(f"aiohttp==3.14.5 \\\n    {HASH}\norjson==3.13.0\n")
    result = run_osv_audit(f"http://127.0.0.1:{closed_port()}/v1/query", tmp_path, lock)
    assert result.returncode == 1, result
    assert (
        "audit: ERROR: the lock files cannot be audited: requirement orjson==3.13.0"
        in result.stderr
    )


class _UnknowingService(VulnerabilityService):
    """What the PyPI service answers where its vulnerability API is not served: 404, which
    pip-audit turns into a skipped dependency."""

    def query(self, spec: Dependency) -> tuple[Dependency, list[VulnerabilityResult]]:
        return SkippedDependency(name=spec.name, skip_reason="Dependency not found on PyPI"), []


def test_a_service_that_knows_none_of_the_pins_warns_without_failing(lock: Path) -> None:
    report = audit([lock], _UnknowingService())
    assert report.exit_code() == 0
    assert report.lines() == [
        "audit: WARNING: the advisory service knew none of the pins; 2 NOT audited "
        "(first: aiohttp: Dependency not found on PyPI)"
    ]
