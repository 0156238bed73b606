"""`gateway routes check FILE` and `gateway routes explain …` (API.md §4): the routing file
through the gateway's own pipeline (`gateway.services.channels`), so that `check` refuses
exactly what the gateway would refuse — channels' adapter settings and key files included."""

from __future__ import annotations

import argparse
import random
import sys
from datetime import UTC, datetime

from gateway.cli.context import load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def cmd_routes(args: argparse.Namespace) -> int:
    from gateway.services.channels import channel_check, routing_env
    from routing.engine import PaymentFacts, route
    from routing.explain import check_text, explain_text
    from routing.loader import RoutingError, load_routing

    settings = load_settings()
    env, check = routing_env(settings), channel_check(str(settings.config_dir))
    if args.routes_cmd == "check":
        ok, text = check_text(args.file, env, check)
        print(text)
        return 0 if ok else 1
    try:
        loaded = load_routing(args.file or settings.routing_file, env, check)
    except RoutingError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    metadata = {}
    for item in args.metadata or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"gateway: --metadata takes key=value, got {item!r}")
        metadata[key] = value
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
