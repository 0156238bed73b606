"""`gateway serve [--migrate]`, `gateway demo` (simulators on, a demo merchant, embedded
databases when no URLs are set, migrations applied) and `gateway simulators` (the channel
simulators alone).

`serve` refuses to start with the development set-up — a routing file trusting the keys under
config/keys/, a channel pointed at this gateway's own /sim/, simulators on a non-loopback host
(`gateway.production`) — unless GATEWAY_ALLOW_DEV_KEYS=true, which `demo` sets. It applies
migrations only when asked (`--migrate` or GATEWAY_MIGRATE_ON_START=true); otherwise it refuses
to start while the database lacks one (`gateway migrate` applies them).
With PROMETHEUS_MULTIPROC_DIR set, it prepares that directory before any metric exists
(`gateway.metrics_multiprocess`), so that /metrics of one process covers every process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.cli.context import load_settings, resolve_endpoints, secret_box, with_pool
from gateway.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("serve", help="run the gateway")
    run.add_argument(
        "--migrate",
        action="store_true",
        help="apply pending migrations first (as GATEWAY_MIGRATE_ON_START=true)",
    )
    run.set_defaults(fn=cmd_serve)
    sub.add_parser("demo", help="run with simulators and a demo merchant").set_defaults(fn=cmd_demo)
    sims = sub.add_parser("simulators", help="run the channel simulators standalone")
    sims.add_argument("--host", default="127.0.0.1")
    sims.add_argument("--port", type=int, default=8090)
    sims.set_defaults(fn=cmd_simulators)


def serve(settings: Settings) -> None:
    """Run the gateway in this process until it is stopped; exit with a message naming what to
    change when it cannot start (production safety, schema behind, routing file invalid)."""
    from gateway import metrics_multiprocess

    metrics_multiprocess.prepare()  # before the app (and so the metrics) is imported
    from aiohttp import web

    from gateway import logs
    from gateway.app import create_app
    from gateway.risk.loader import RiskError
    from gateway.store.db import MigrationError
    from routing.files import RulesFileError

    logs.configure(settings.log_level, settings.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass
    try:
        refuse_unsafe(settings)  # before any database is started or reached
        endpoints = resolve_endpoints(settings)
        app = create_app(settings, endpoints)
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
            shutdown_timeout=5,
            reuse_port=settings.reuse_port or None,
        )
    except MigrationError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    except RulesFileError as exc:
        path = settings.risk_file if isinstance(exc, RiskError) else settings.routing_file
        count = len(exc.errors)
        lines = [f"gateway: cannot start, {path} is invalid ({count} error{'s' * (count != 1)}):"]
        lines += [f"  {error}" for error in exc.errors]
        raise SystemExit("\n".join(lines)) from None


def refuse_unsafe(settings: Settings) -> None:
    """Exit naming every production safety problem (`gateway.production`), unless
    GATEWAY_ALLOW_DEV_KEYS=true. Raises RoutingError when the routing file is invalid."""
    if settings.allow_dev_keys:
        return
    from gateway import production
    from gateway.services.channels import load_routing_file

    found = production.problems(settings, load_routing_file(settings))
    if found:
        raise SystemExit(production.refusal(found))


def cmd_serve(args: argparse.Namespace) -> int:
    serve(load_settings(**({"migrate_on_start": True} if args.migrate else {})))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulators on, embedded databases when no URLs are set, a demo merchant, then serve."""
    from gateway.auth.signature import KeyType
    from gateway.services import merchants
    from gateway.services.audit import cli_actor
    from gateway.store.db import Pool

    settings = load_settings(simulators=True, migrate_on_start=True, allow_dev_keys=True)
    box = secret_box(settings)
    private_dir(settings.var_dir)  # before the embedded databases and the merchant file
    merchant_file = settings.var_dir / "demo-merchant.json"
    if not merchant_file.exists():

        async def create(pool: Pool) -> dict[str, Any]:
            issued, webhook_secret = await merchants.create_merchant(
                pool, box, "Demo shop", KeyType.HMAC_SHA256, None, audit_as=cli_actor()
            )
            return {**issued.as_dict(), "webhook_secret": webhook_secret}

        data = asyncio.run(with_pool(settings, create))
        write_private(merchant_file, json.dumps(data, indent=2))
    url = settings.effective_public_url
    print(
        f"""
Payment gateway demo on {url}  (simulators under {url}/sim/…)

A demo merchant's credentials are in {merchant_file} (keep them secret).
Make a first signed request:

    .venv/bin/python examples/client.py --url {url} --merchant-file {merchant_file}

or with curl:  GATEWAY_URL={url} MERCHANT_FILE={merchant_file} examples/curl.sh

Press Ctrl+C to stop.
""",
        file=sys.stderr,
    )
    serve(settings)
    return 0


def private_dir(path: Path) -> None:
    """Create `path` (with its parents) readable by this user only, or make it so: it holds
    the embedded databases, the master key and the demo merchant's credentials."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private(path: Path, text: str) -> None:
    """Write `path` as a file that is 0600 from its first byte (a temporary file created so,
    then renamed over `path`): never readable by others, never seen half written."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def cmd_simulators(args: argparse.Namespace) -> int:
    """The channel simulators alone, in their own process, under /sim/{adapter}/."""
    from aiohttp import web

    from adapters.registry import available_simulators, build_simulator
    from adapters.simkit import SimulatorSettings, mount
    from gateway import logs

    settings = load_settings()
    logs.configure(settings.log_level, settings.log_json)
    app = web.Application()
    sim_settings = SimulatorSettings(
        config_dir=str(settings.config_dir), notify_time_scale=settings.sim_notify_time_scale
    )
    for adapter in available_simulators():
        mount(app, adapter, build_simulator(adapter, sim_settings))
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0
