"""The `gateway` command line (API.md §4): `main` and its parser. Each command group is a module
of this package with a `register(subparsers)` — `serve` (serve, demo, simulators), `migrate`,
`merchant`, `master_key` (master-key rotate), `routes`, `reconcile` (reconcile, settlement),
`operator` (accounts and tokens), `audit` (verify) — and what they share is in
`gateway.cli.context`. Every command that changes something is audited as `cli:<os user>`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from gateway.cli import audit, master_key, merchant, migrate, operator, reconcile, routes, serve

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Payment gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    migrate.register(sub)
    merchant.register(sub)
    master_key.register(sub)
    routes.register(sub)
    reconcile.register(sub)
    operator.register(sub)
    audit.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from gateway import logs

    args = build_parser().parse_args(argv)
    # logs go to stderr from the first line on: stdout is for --json and other answers
    logs.configure(os.environ.get("GATEWAY_LOG_LEVEL", "info"))
    result: int = args.fn(args)
    return result
