"""`gateway migrate`: apply the database migrations not yet applied."""

from __future__ import annotations

import argparse
import asyncio

from gateway.cli.context import load_settings, resolve_endpoints


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.store.db import create_pool, migrate

    settings = load_settings()

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
