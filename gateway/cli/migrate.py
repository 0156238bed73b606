"""`gateway migrate`: apply the database migrations not yet applied (audited as
`cli:<os user>` when it applied any)."""

from __future__ import annotations

import argparse
import asyncio

from gateway.cli.context import load_settings, resolve_endpoints


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.services import audit
    from gateway.store.db import create_pool, migrate

    settings = load_settings()

    async def run() -> list[str]:
        endpoints = resolve_endpoints(settings)
        pool = await create_pool(endpoints.database_url, 1, 1)
        try:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            if applied:  # the audit log exists from 0009 on
                await audit.record_alone(
                    pool, audit.cli_actor(), "schema.migrate", after={"applied": applied}
                )
            return applied
        finally:
            await pool.close()

    applied = asyncio.run(run())
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0
