"""Load generator for `POST /v1/payments`, signing like a merchant would (API.md §1.1).

Two modes, both bounded in time (--duration) and in count (--max-requests):

- closed loop (default): --concurrency N workers, each sending its next request as soon as the
  previous one is answered;
- constant arrival rate: --rate R requests per second whatever the answers, latency measured
  from each request's scheduled start (so a slow server cannot hide its queueing: no
  coordinated omission); --concurrency then caps the requests in flight (excess ones are
  counted as `skipped`, not sent).

Prints throughput, latency percentiles, answers by status and, when the gateway sends
`X-Gateway-Overhead-Ms`, that header's percentiles. With --server-pid, also the CPU time the
gateway process spent per request (Linux /proc).

Only loopback addresses are accepted as targets. A merchant's code, so it imports nothing from
the gateway: the signature is written out here.

    python tests/bench/loadgen.py --url http://127.0.0.1:8080 \\
        --merchant-file var/bench-merchant.json --concurrency 32 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import math
import os
import random
import secrets
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

MAX_DURATION_S = 3600.0
MAX_REQUESTS = 10_000_000
PATH = "/v1/payments"


# --- signing (API.md §1.1) -----------------------------------------------------------------


def sign_hmac(
    key_id: str, secret: str, method: str, path_and_query: str, body: bytes, now: int | None = None
) -> str:
    """The Authorization header of one request, HMAC-SHA256 keyed with the secret's UTF-8."""
    timestamp = str(int(time.time()) if now is None else now)
    nonce = secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-]
    message = f"{method.upper()}\n{path_and_query}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode("ascii")
    return (
        f'GW1-HMAC-SHA256 key_id="{key_id}",timestamp="{timestamp}",'
        f'nonce="{nonce}",signature="{signature}"'
    )


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    key_id: str
    secret: str

    @classmethod
    def load(cls, path: Path) -> Merchant:
        data = json.loads(path.read_text())
        key_type = str(data.get("key_type", "hmac-sha256")).lower()
        if key_type != "hmac-sha256" or not data.get("secret"):
            raise SystemExit(
                f"{path}: the load generator signs with HMAC-SHA256 only; create the bench "
                "merchant with `gateway merchant create --name bench --json` (the default key type)"
            )
        return cls(str(data["merchant_id"]), str(data["key_id"]), str(data["secret"]))


# --- safety: loopback only --------------------------------------------------------------------


def check_loopback(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"--url must be http(s)://host:port, not {url!r}")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SystemExit(f"cannot resolve {parts.hostname!r}: {exc}") from None
    addresses = {str(info[4][0]) for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a).is_loopback)
    if not addresses or outside:
        raise SystemExit(
            f"refusing to load {parts.hostname!r} ({', '.join(sorted(addresses))}): "
            "this tool only targets loopback addresses (127.0.0.0/8, ::1)"
        )


# --- statistics ------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies_ms: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    skipped: int = 0

    def record(self, status: str, latency_ms: float, overhead: str | None) -> None:
        self.statuses[status] += 1
        self.latencies_ms.append(latency_ms)
        if overhead is not None:
            with contextlib.suppress(ValueError):
                self.overhead_ms.append(float(overhead))

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses["200"] + self.statuses["201"]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    out = {f"p{q}": percentile(ordered, q) for q in (50, 90, 99)}
    out["max"] = ordered[-1] if ordered else float("nan")
    out["mean"] = sum(ordered) / len(ordered) if ordered else float("nan")
    return {k: round(v, 3) for k, v in out.items()}


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc (Linux); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Load:
    session: aiohttp.ClientSession
    base_url: str
    merchant: Merchant
    stats: Stats
    currency: str
    amount_max: int
    idempotency_keys: bool = False
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    issued: int = 0

    def next_body(self) -> bytes:
        self.issued += 1
        body = {
            "merchant_order_id": f"bench-{self.run_id}-{self.issued}",
            "amount": random.randint(1, self.amount_max),
            "currency": self.currency,
            "method": "card",
            "description": f"Bench order {self.issued}",
        }
        return json.dumps(body, separators=(",", ":")).encode()

    async def one(self, started: float | None = None) -> None:
        """Send one create; latency from `started` (the scheduled time) or from now."""
        body = self.next_body()
        headers = {
            "Authorization": sign_hmac(
                self.merchant.key_id, self.merchant.secret, "POST", PATH, body
            ),
            "Content-Type": "application/json",
        }
        if self.idempotency_keys:  # one key per order, as a merchant retrying safely would
            headers["Idempotency-Key"] = f"bench-{self.run_id}-{self.issued}"
        t0 = time.perf_counter() if started is None else started
        try:
            async with self.session.post(self.base_url + PATH, data=body, headers=headers) as r:
                await r.read()
                status = str(r.status)
                overhead = r.headers.get("X-Gateway-Overhead-Ms")
        except TimeoutError:
            status, overhead = "timeout", None
        except aiohttp.ClientError as exc:
            status, overhead = type(exc).__name__, None
        self.stats.record(status, (time.perf_counter() - t0) * 1000, overhead)


async def closed_loop(load: Load, concurrency: int, duration: float, max_requests: int) -> None:
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline and load.issued < max_requests:
            await load.one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def open_loop(
    load: Load, rate: float, concurrency: int, duration: float, max_requests: int
) -> None:
    start = time.perf_counter()
    total = min(max_requests, int(rate * duration))
    in_flight: set[asyncio.Task[None]] = set()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= concurrency:
            load.stats.skipped += 1
            continue
        task = asyncio.create_task(load.one(started=scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)


async def wait_ready(session: aiohttp.ClientSession, base_url: str, within: float) -> None:
    deadline = time.monotonic() + within
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            async with session.get(base_url + "/readyz") as r:
                if r.status == 200:
                    return
                last = f"{r.status} {(await r.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = type(exc).__name__
        await asyncio.sleep(0.25)
    raise SystemExit(f"{base_url}/readyz did not answer 200 within {within:.0f} s ({last})")


async def run(args: argparse.Namespace) -> dict[str, object]:
    merchant = Merchant.load(args.merchant_file)
    base_url = args.url.rstrip("/")
    limit = args.concurrency
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.wait_ready:
            await wait_ready(session, base_url, args.wait_ready)
        stats = Stats()
        load = Load(
            session,
            base_url,
            merchant,
            stats,
            args.currency,
            args.amount_max,
            idempotency_keys=args.idempotency_keys,
        )
        cpu_before = cpu_seconds(args.server_pid) if args.server_pid else None
        started = time.perf_counter()
        if args.rate:
            await open_loop(load, args.rate, limit, args.duration, args.max_requests)
        else:
            await closed_loop(load, limit, args.duration, args.max_requests)
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(args.server_pid) if args.server_pid else None

    result: dict[str, object] = {
        "mode": f"open loop at {args.rate}/s" if args.rate else "closed loop",
        "concurrency": limit,
        "duration_s": round(elapsed, 3),
        "requests": stats.completed,
        "ok": stats.ok,
        "throughput_rps": round(stats.completed / elapsed, 1) if elapsed else 0.0,
        "ok_rps": round(stats.ok / elapsed, 1) if elapsed else 0.0,
        "latency_ms": summary(stats.latencies_ms),
        "statuses": dict(sorted(stats.statuses.items())),
        "skipped": stats.skipped,
    }
    if stats.overhead_ms:
        result["gateway_overhead_ms"] = summary(stats.overhead_ms)
    if cpu_before is not None and cpu_after is not None:
        cpu = cpu_after - cpu_before
        result["server_cpu_s"] = round(cpu, 2)
        if stats.completed:
            result["server_cpu_ms_per_request"] = round(cpu * 1000 / stats.completed, 3)
    return result


def report(result: dict[str, object]) -> str:
    def ms(values: object) -> str:
        assert isinstance(values, dict)
        return "  ".join(f"{k} {v:.2f}" for k, v in values.items()) + "  (ms)"

    lines = [
        f"mode        {result['mode']}, concurrency {result['concurrency']}, "
        f"{result['duration_s']} s",
        f"requests    {result['requests']} ({result['ok']} created)  "
        f"throughput {result['throughput_rps']}/s  created {result['ok_rps']}/s",
        f"latency     {ms(result['latency_ms'])}",
    ]
    if "gateway_overhead_ms" in result:
        lines.append(f"overhead    {ms(result['gateway_overhead_ms'])}  X-Gateway-Overhead-Ms")
    statuses = result["statuses"]
    assert isinstance(statuses, dict)
    lines.append("answers     " + ", ".join(f"{k}: {v}" for k, v in statuses.items()))
    errors = {k: v for k, v in statuses.items() if k not in ("200", "201")}
    lines.append("errors      " + (", ".join(f"{k}: {v}" for k, v in errors.items()) or "none"))
    if result["skipped"]:
        lines.append(f"skipped     {result['skipped']} (in-flight cap reached: server too slow)")
    if "server_cpu_s" in result:
        lines.append(
            f"server CPU  {result['server_cpu_s']} s, "
            f"{result.get('server_cpu_ms_per_request', '?')} ms per request"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway (loopback only)")
    p.add_argument(
        "--merchant-file",
        type=Path,
        required=True,
        help="JSON printed by `gateway merchant create --json`",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="connections: workers in closed loop, the in-flight cap at a --rate (default 32)",
    )
    p.add_argument("--rate", type=float, help="constant arrival rate, requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    p.add_argument(
        "--max-requests", type=int, default=1_000_000, help="stop after this many requests"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    p.add_argument("--currency", default="CNY")
    p.add_argument("--amount-max", type=int, default=100_000, help="amounts 1..N minor units")
    p.add_argument(
        "--wait-ready", type=float, default=0.0, metavar="S", help="first wait for /readyz"
    )
    p.add_argument(
        "--idempotency-keys",
        action="store_true",
        help="send an Idempotency-Key with every request (one per order)",
    )
    p.add_argument("--server-pid", type=int, help="report this process's CPU time per request")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:.0f}]")
    if not 0 < args.max_requests <= MAX_REQUESTS:
        p.error(f"--max-requests must be in [1, {MAX_REQUESTS}]")
    if not 1 <= args.concurrency <= 10_000:
        p.error("--concurrency must be in [1, 10000]")
    if args.rate is not None and not 0 < args.rate <= 100_000:
        p.error("--rate must be in (0, 100000]")
    if args.amount_max < 1:
        p.error("--amount-max must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_loopback(args.url)
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
