"""The `gateway` command line (API.md §4)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.settings import Settings


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except Exception as exc:  # pydantic's message names the variable
        raise SystemExit(f"gateway: bad settings: {exc}") from None


def resolve_endpoints(settings: Settings) -> Any:
    """The database and Redis URLs, starting the embedded servers for the ones not set."""
    from gateway.app import Endpoints

    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url is None or redis_url is None:
        from gateway.embedded import start_embedded

        embedded = start_embedded(
            settings.var_dir, postgres=database_url is None, redis=redis_url is None
        )
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
        print(f"gateway: embedded services under {settings.var_dir}/", file=sys.stderr)
    assert database_url is not None and redis_url is not None
    return Endpoints(database_url=database_url, redis_url=redis_url)


def _box(settings: Settings) -> Any:
    from gateway.auth.secretbox import SecretBox

    if settings.master_key is None:
        raise SystemExit("gateway: GATEWAY_MASTER_KEY is not set (32 bytes, URL-safe base64)")
    try:
        return SecretBox(settings.master_key.get_secret_value())
    except ValueError as exc:
        raise SystemExit(f"gateway: {exc}") from None


async def _with_pool(settings: Settings, job: Any) -> Any:
    from gateway import logs
    from gateway.store.db import create_pool, migrate

    logs.bind_job()  # a command is one job (run by asyncio.run: a context of its own)
    endpoints = resolve_endpoints(settings)
    pool = await create_pool(endpoints.database_url, 1, 2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        return await job(pool)
    finally:
        await pool.close()


def _read_public_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"gateway: cannot read {path}: {exc}") from None


def _print_key(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


def cmd_merchant(args: argparse.Namespace) -> int:
    from gateway.auth.signature import KeyType
    from gateway.services import merchants

    settings = _settings()
    box = _box(settings)

    async def create(pool: Any) -> None:
        issued, webhook_secret = await merchants.create_merchant(
            pool, box, args.name, KeyType(args.key_type), _read_public_key(args.public_key)
        )
        _print_key({**issued.as_dict(), "webhook_secret": webhook_secret}, args.json)

    async def rotate(pool: Any) -> None:
        issued = await merchants.rotate_key(
            pool, box, args.merchant, KeyType(args.key_type), _read_public_key(args.public_key)
        )
        _print_key(issued.as_dict(), args.json)

    async def revoke(pool: Any) -> None:
        await merchants.revoke_key(pool, args.key_id)
        print(f"revoked {args.key_id}")

    async def registered(pool: Any) -> None:  # a subcommand a service added with register()
        _print_key(await args.merchant_job(pool, box, args), args.json)

    jobs = {"create": create, "rotate-key": rotate, "revoke-key": revoke}
    job = jobs.get(args.merchant_cmd, registered)
    try:
        asyncio.run(_with_pool(settings, job))
    except merchants.MerchantError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.store.db import create_pool, migrate

    settings = _settings()

    async def run() -> list[str]:
        endpoints = resolve_endpoints(settings)
        pool = await create_pool(endpoints.database_url, 1, 1)
        try:
            async with pool.acquire() as conn:
                return await migrate(conn)
        finally:
            await pool.close()

    applied = asyncio.run(run())
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    from routing.engine import PaymentFacts, route
    from routing.explain import check_text, explain_text
    from routing.loader import RoutingError, load_routing

    if args.routes_cmd == "check":
        from gateway.app import routing_env

        ok, text = check_text(args.file, routing_env(_settings()))
        print(text)
        return 0 if ok else 1
    settings = _settings()
    from gateway.app import routing_env

    try:
        loaded = load_routing(args.file or settings.routing_file, routing_env(settings))
    except RoutingError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    metadata = {}
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"gateway: --metadata takes key=value, got {item!r}")
        metadata[key] = value
    import random
    from datetime import UTC, datetime

    facts = PaymentFacts(
        method=args.method,
        amount=args.amount,
        currency=args.currency,
        merchant_id=args.merchant or "",
        metadata=metadata,
        now=datetime.now(UTC),
    )
    decision = route(loaded, facts, {}, {}, random.Random(args.seed))
    print(explain_text(decision, loaded))
    return 0 if decision.candidates else 1


def _serve(settings: Settings) -> None:
    from aiohttp import web

    from gateway import logs
    from gateway.app import create_app

    logs.configure(settings.log_level, settings.log_json)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass
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


def cmd_serve(args: argparse.Namespace) -> int:
    _serve(_settings())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulators on, embedded databases when no URLs are set, a demo merchant, then serve."""
    from gateway.auth.signature import KeyType
    from gateway.services import merchants

    settings = _settings(simulators=True)
    box = _box(settings)
    merchant_file = settings.var_dir / "demo-merchant.json"
    if not merchant_file.exists():

        async def create(pool: Any) -> dict[str, Any]:
            issued, webhook_secret = await merchants.create_merchant(
                pool, box, "Demo shop", KeyType.HMAC_SHA256, None
            )
            return {**issued.as_dict(), "webhook_secret": webhook_secret}

        data = asyncio.run(_with_pool(settings, create))
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        merchant_file.write_text(json.dumps(data, indent=2))
        os.chmod(merchant_file, 0o600)
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
    _serve(settings)
    return 0


def cmd_simulators(args: argparse.Namespace) -> int:
    """The channel simulators alone, in their own process, under /sim/{adapter}/."""
    from aiohttp import web

    from adapters.registry import available_simulators, build_simulator
    from adapters.simkit import SimulatorSettings, mount
    from gateway import logs

    settings = _settings()
    logs.configure(settings.log_level, settings.log_json)
    app = web.Application()
    sim_settings = SimulatorSettings(
        config_dir=str(settings.config_dir), notify_time_scale=settings.sim_notify_time_scale
    )
    for adapter in available_simulators():
        mount(app, adapter, build_simulator(adapter, sim_settings))
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Payment gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the gateway").set_defaults(fn=cmd_serve)
    sub.add_parser("demo", help="run with simulators and a demo merchant").set_defaults(fn=cmd_demo)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)

    sims = sub.add_parser("simulators", help="run the channel simulators standalone")
    sims.add_argument("--host", default="127.0.0.1")
    sims.add_argument("--port", type=int, default=8090)
    sims.set_defaults(fn=cmd_simulators)

    key_types = ["hmac-sha256", "ed25519", "rsa-sha256"]
    merchant = sub.add_parser("merchant", help="manage merchants and their keys")
    msub = merchant.add_subparsers(dest="merchant_cmd", required=True)
    create = msub.add_parser("create", help="create a merchant and its first key")
    create.add_argument("--name", required=True)
    create.add_argument("--key-type", choices=key_types, default="hmac-sha256")
    create.add_argument("--public-key", help="PEM SubjectPublicKeyInfo file (ed25519, rsa)")
    create.add_argument("--json", action="store_true")
    rotate = msub.add_parser("rotate-key", help="add a second active key")
    rotate.add_argument("--merchant", required=True)
    rotate.add_argument("--key-type", choices=key_types, default="hmac-sha256")
    rotate.add_argument("--public-key")
    rotate.add_argument("--json", action="store_true")
    revoke = msub.add_parser("revoke-key", help="revoke a key")
    revoke.add_argument("--key-id", required=True)
    from gateway.services import webhook_secrets

    webhook_secrets.register(msub)
    merchant.set_defaults(fn=cmd_merchant)

    routes = sub.add_parser("routes", help="check and explain routing rules")
    rsub = routes.add_subparsers(dest="routes_cmd", required=True)
    check = rsub.add_parser("check", help="validate a routing file")
    check.add_argument("file")
    explain = rsub.add_parser("explain", help="show which channel a payment would get")
    explain.add_argument("--method", required=True)
    explain.add_argument("--amount", type=int, required=True)
    explain.add_argument("--currency", required=True)
    explain.add_argument("--merchant")
    explain.add_argument("--metadata", action="append", help="key=value (repeatable)")
    explain.add_argument("--file", help="routing file (default GATEWAY_ROUTING_FILE)")
    explain.add_argument("--seed", type=int, default=None, help="seed weighted picks")
    routes.set_defaults(fn=cmd_routes)
    from gateway.reconcile.cli import register

    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from gateway import logs

    args = build_parser().parse_args(argv)
    # logs go to stderr from the first line on: stdout is for --json and other answers
    logs.configure(os.environ.get("GATEWAY_LOG_LEVEL", "info"))
    result: int = args.fn(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
