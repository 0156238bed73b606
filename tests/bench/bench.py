"""`make bench`: create-payment performance of the gateway, measured end to end.

Runs on this machine's PostgreSQL and Redis, with the channel simulators in a process of their
own (so their signing does not count as gateway time), and prints, per scenario:
throughput, latency and the gateway's own overhead percentiles (from `X-Gateway-Overhead-Ms`),
CPU seconds per 1,000 payments per gateway process, and database commits per payment. A bare
aiohttp JSON endpoint is measured the same way as the reference for what this machine can do.

    .venv/bin/python tests/bench/bench.py --duration 20            # the default scenarios
    .venv/bin/python tests/bench/bench.py --seed-rows 10000000      # latency vs table size

Scenarios: closed loop (32 connections), without and with an Idempotency-Key per request,
constant rates 200/s and 500/s, two gateway processes (SO_REUSEPORT), the bare reference; with
--seed-rows, the closed loop again after seeding the payments table. Everything it starts, it stops; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
DB = "gateway_bench"
PG = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
GW_PORT, SIM_PORT, REF_PORT = 8089, 8088, 8087
CLK_TCK = os.sysconf("SC_CLK_TCK")


def psql(sql: str, db: str = "postgres") -> str:
    out = subprocess.run(
        [*PG, "-d", db, "-At", "-c", sql], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_of_command(name: str) -> float:
    """CPU seconds of every live process whose command name is `name` (the PostgreSQL server
    and its backends, the Redis server). Processes that exit in between are missed: the
    gateway's pool connections, which do the work measured here, live through a scenario."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                total += cpu_seconds(int(comm.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def wait_ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {seconds} s")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sims_pid: int | None = None
        key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        routing = (ROOT / "config" / "routing.yaml").read_text()
        routing = routing.replace("${GATEWAY_PUBLIC_URL}/sim", f"http://127.0.0.1:{SIM_PORT}/sim")
        (self.tmp / "routing.yaml").write_text(routing)
        self.env = {
            **os.environ,
            "GATEWAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{DB}",
            "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0",
            "GATEWAY_REDIS_PREFIX": f"gwbench:{os.getpid()}:",
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(GW_PORT),
            "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{GW_PORT}",
            "GATEWAY_ROUTING_FILE": str(self.tmp / "routing.yaml"),
            "GATEWAY_CONFIG_DIR": str(ROOT / "config"),
            "GATEWAY_MASTER_KEY": key,
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_SIMULATORS": "false",
            "GATEWAY_ALLOW_DEV_KEYS": "true",  # the simulators' development keys
            # pending payments are re-queried after 10 min: the bench measures creates
            "GATEWAY_SYNC_SCHEDULE": "600",
        }

    # ---- processes ----------------------------------------------------------------------
    def start(
        self, *cmd: str, env: dict[str, str] | None = None, log: str
    ) -> subprocess.Popen[bytes]:
        out = (self.tmp / log).open("wb")
        proc = subprocess.Popen(cmd, env=env or self.env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

    # ---- measurements -------------------------------------------------------------------
    def loadgen(self, url: str, *extra: str) -> dict[str, Any]:
        out = subprocess.run(
            [
                str(BIN / "python"),
                str(ROOT / "tests/bench/loadgen.py"),
                "--url",
                url,
                "--merchant-file",
                str(self.tmp / "merchant.json"),
                "--json",
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
        )
        if not out.stdout.strip():
            raise SystemExit(f"loadgen failed: {out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def other_cpu(self) -> dict[str, float]:
        """CPU seconds so far of the simulators, PostgreSQL and Redis."""
        return {
            "simulators": cpu_seconds(self.sims_pid) if self.sims_pid else 0.0,
            "postgres": cpu_of_command("postgres"),
            "redis": cpu_of_command("redis-server"),
        }

    def redis_commands(self) -> int:
        """Commands the Redis server has processed (all clients: other users of the same
        server add to it)."""
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "info", "stats"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for line in out.splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":", 1)[1])
        raise SystemExit("redis INFO has no total_commands_processed")

    def commits(self) -> int:
        return int(psql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{DB}'"))

    def payments(self) -> int:
        return int(psql("SELECT count(*) FROM payments", DB))

    def scenario(self, name: str, gateway_pids: list[int], *load: str) -> dict[str, Any]:
        cpu_before = {pid: cpu_seconds(pid) for pid in gateway_pids}
        commits_before, payments_before = self.commits(), self.payments()
        redis_before = self.redis_commands()
        others_before = self.other_cpu()
        loadgen_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = self.loadgen(
            f"http://127.0.0.1:{GW_PORT}", "--duration", str(self.args.duration), *load
        )
        loadgen_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(0.5)  # let pg_stat_database catch up
        created = self.payments() - payments_before
        commits = self.commits() - commits_before
        redis_commands = self.redis_commands() - redis_before
        cpu = sum(cpu_seconds(pid) - cpu_before[pid] for pid in gateway_pids)
        others = {k: v - others_before[k] for k, v in self.other_cpu().items()}
        others["loadgen"] = (loadgen_after.ru_utime + loadgen_after.ru_stime) - (
            loadgen_before.ru_utime + loadgen_before.ru_stime
        )
        if created:
            # CPU ms per payment of every part of the system: what bounds throughput when
            # they all share this machine's cores
            result["cpu_ms_per_payment"] = {
                "gateway": round(cpu * 1000 / created, 3),
                **{k: round(v * 1000 / created, 3) for k, v in others.items()},
            }
        result.update(
            scenario=name,
            processes=len(gateway_pids),
            created_total=created,
            db_transactions_per_payment=round(commits / created, 2) if created else None,
            redis_commands_per_payment=round(redis_commands / created, 2) if created else None,
            cpu_s_per_1000_per_process=round(cpu / created * 1000 / len(gateway_pids), 3)
            if created
            else None,
        )
        return result

    def run(self) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        psql(f"CREATE DATABASE {DB}")
        subprocess.run(
            [str(BIN / "gateway"), "migrate"], env=self.env, check=True, capture_output=True
        )
        merchant = subprocess.run(
            [str(BIN / "gateway"), "merchant", "create", "--name", "bench", "--json"],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        (self.tmp / "merchant.json").write_text(merchant.stdout)
        sims = self.start(
            str(BIN / "gateway"), "simulators", "--port", str(SIM_PORT), log="sims.log"
        )
        self.sims_pid = sims.pid

        # one gateway process
        gw = self.start(str(BIN / "gateway"), "serve", log="gateway.log")
        wait_ready(f"http://127.0.0.1:{GW_PORT}/readyz")
        self.loadgen(f"http://127.0.0.1:{GW_PORT}", "--duration", "3", "--concurrency", "8")
        results.append(self.scenario("closed loop, 1 process", [gw.pid], "--concurrency", "32"))
        results.append(
            self.scenario(
                "closed loop, 1 process, with Idempotency-Key",
                [gw.pid],
                "--concurrency",
                "32",
                "--idempotency-keys",
            )
        )
        for rate in (200, 500):  # one this machine sustains, and the target
            results.append(
                self.scenario(
                    f"rate {rate}/s, 1 process",
                    [gw.pid],
                    "--rate",
                    str(rate),
                    "--concurrency",
                    "256",
                )
            )
        if self.args.seed_rows:
            seeded = self.seed(self.args.seed_rows)
            results.append(
                self.scenario(
                    f"closed loop, 1 process, {seeded:,} rows", [gw.pid], "--concurrency", "32"
                )
            )
        self.stop(gw)

        # two processes sharing the port
        env2 = {**self.env, "GATEWAY_REUSE_PORT": "true"}
        gws = [
            self.start(str(BIN / "gateway"), "serve", env=env2, log=f"gateway{i}.log")
            for i in range(2)
        ]
        wait_ready(f"http://127.0.0.1:{GW_PORT}/readyz")
        time.sleep(1)
        results.append(
            self.scenario("closed loop, 2 processes", [p.pid for p in gws], "--concurrency", "64")
        )
        for proc in gws:
            self.stop(proc)

        # the reference: a bare aiohttp JSON endpoint on the same machine
        ref = self.start(
            str(BIN / "python"),
            str(ROOT / "tests/bench/bare_aiohttp.py"),
            str(REF_PORT),
            log="ref.log",
        )
        wait_ready(f"http://127.0.0.1:{REF_PORT}/healthz")
        result = self.loadgen(
            f"http://127.0.0.1:{REF_PORT}",
            "--duration",
            str(self.args.duration),
            "--concurrency",
            "32",
        )
        result["scenario"] = "bare aiohttp JSON endpoint (reference)"
        results.append(result)
        self.stop(ref)
        return results

    def seed(self, rows: int) -> int:
        """Fill the payments table (and their attempts) with `rows` finished payments of
        the bench merchant (so its `(merchant_id, merchant_order_id)` index holds them all),
        in batches, then ANALYZE."""
        mid = psql("SELECT id FROM merchants LIMIT 1", DB)
        have = int(psql("SELECT count(*) FROM payments", DB))
        batch = 500_000
        done = have
        while done < rows:
            n = min(batch, rows - done)
            psql(
                f"""
                WITH p AS (
                  INSERT INTO payments (id, merchant_id, merchant_order_id, status, amount,
                      currency, method, description, metadata, channel, channel_order_id,
                      attempt_count, expires_at, created_at, paid_at)
                  SELECT 'pay_seed' || lpad(g::text, 20, '0'), '{mid}', 'seed-' || g,
                         'succeeded', 100 + g % 10000, 'CNY', 'card', 'seeded', '{{}}',
                         'bank_icbc', 'pay_seed' || lpad(g::text, 20, '0') || '_1', 1,
                         now() - interval '1 day', now() - interval '2 days',
                         now() - interval '2 days'
                    FROM generate_series({done}, {done + n - 1}) AS g
                  RETURNING id, channel_order_id
                )
                INSERT INTO payment_attempts (id, payment_id, seq, channel, adapter,
                    channel_order_id, status)
                SELECT 'att_' || substr(id, 5), id, 1, 'bank_icbc', 'bank', channel_order_id,
                       'succeeded' FROM p
                """,
                DB,
            )
            done += n
            print(f"seeded {done:,} rows", file=sys.stderr)
        psql("ANALYZE", DB)
        return int(psql("SELECT count(*) FROM payments", DB))


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | throughput /s | p50 ms | p90 ms | p99 ms | overhead p50 | overhead p99 |"
        " CPU s / 1000 / process | DB transactions / payment | Redis commands / payment |"
        " errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lat, over = r.get("latency_ms", {}), r.get("gateway_overhead_ms") or {}
        errors = {k: v for k, v in r.get("statuses", {}).items() if k not in ("200", "201")}
        lines.append(
            f"| {r['scenario']} | {r.get('ok_rps', 0):.0f} | {lat.get('p50', 0):.1f} | "
            f"{lat.get('p90', 0):.1f} | {lat.get('p99', 0):.1f} | "
            f"{over.get('p50', float('nan')):.2f} | {over.get('p99', float('nan')):.2f} | "
            f"{r.get('cpu_s_per_1000_per_process') or '-'} | "
            f"{r.get('db_transactions_per_payment') or '-'} | "
            f"{r.get('redis_commands_per_payment') or '-'} | {errors or 'none'} |"
        )
    parts = ["gateway", "simulators", "loadgen", "postgres", "redis"]
    lines += [
        "",
        "CPU ms per created payment, by process (all share the machine's cores):",
        "",
        "| scenario | " + " | ".join(parts) + " | total |",
        "| --- |" + " ---: |" * (len(parts) + 1),
    ]
    for r in results:
        split = r.get("cpu_ms_per_payment")
        if split:
            cells = " | ".join(f"{split.get(k, 0):.2f}" for k in parts)
            lines.append(f"| {r['scenario']} | {cells} | {sum(split.values()):.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--seed-rows", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        bench.close()
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
