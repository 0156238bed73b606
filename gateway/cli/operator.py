"""`gateway operator create | disable | list` and `gateway operator token create | revoke`
(API.md §4.1). Every change is audited as `cli:<os user>`.

`operator create` reads the password as one line on standard input when that is not a
terminal (`printf '%s\\n' "$PW" | gateway operator create …`), else generates one and prints it
once."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TextIO

from gateway.cli.context import load_settings, print_record, with_pool

if TYPE_CHECKING:
    from gateway.store.db import Pool

ROLES = ("viewer", "support", "finance", "admin")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    operator = sub.add_parser("operator", help="operators' accounts and service tokens")
    osub = operator.add_subparsers(dest="operator_cmd", required=True)
    create = osub.add_parser("create", help="create an operator account")
    create.add_argument("--email", required=True)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--json", action="store_true")
    disable = osub.add_parser("disable", help="disable an account and end its sessions")
    disable.add_argument("--email", required=True)
    disable.add_argument("--reason")
    listing = osub.add_parser("list", help="the accounts and the tokens")
    listing.add_argument("--json", action="store_true")
    token = osub.add_parser("token", help="service tokens")
    tsub = token.add_subparsers(dest="token_cmd", required=True)
    tcreate = tsub.add_parser("create", help="issue a token (printed once)")
    tcreate.add_argument("--name", required=True)
    tcreate.add_argument("--role", required=True, choices=ROLES)
    tcreate.add_argument("--json", action="store_true")
    trevoke = tsub.add_parser("revoke", help="revoke a token")
    trevoke.add_argument("--id", required=True, dest="token_id")
    trevoke.add_argument("--reason")
    operator.set_defaults(fn=cmd_operator)


def read_password(stdin: TextIO) -> str | None:
    """The password on standard input (one line) when it is not a terminal; None when it is
    one (a password is generated then)."""
    if stdin.isatty():
        return None
    line = stdin.readline()
    if not line:
        raise SystemExit("gateway: standard input is empty: give the password as one line")
    return line.rstrip("\r\n")


def cmd_operator(args: argparse.Namespace) -> int:
    from gateway.services import operators
    from gateway.services.audit import cli_actor
    from gateway.services.operators import OperatorService

    settings = load_settings()
    actor = cli_actor()

    async def create(pool: Pool) -> None:
        given = read_password(sys.stdin)
        password = operators.generate_password() if given is None else given
        created = await OperatorService(pool).create_operator(
            args.email, operators.parse_role(args.role), password, actor
        )
        record = {"operator_id": created.id, "email": created.email, "role": created.role.value}
        if given is None:
            record["password"] = password  # shown this once; only its argon2id hash is kept
        print_record(record, args.json)

    async def disable(pool: Pool) -> None:
        disabled = await OperatorService(pool).disable_operator(args.email, actor, args.reason)
        print(f"disabled {disabled.email}")

    async def listing(pool: Pool) -> None:
        service = OperatorService(pool)
        accounts = [
            {
                "operator_id": o.id,
                "email": o.email,
                "role": o.role.value,
                "disabled": o.disabled_at is not None,
            }
            for o in await service.list_operators()
        ]
        tokens = [
            {
                "token_id": t.id,
                "name": t.name,
                "role": t.role.value,
                "revoked": t.revoked_at is not None,
            }
            for t in await service.list_tokens()
        ]
        if args.json:
            print_record({"operators": accounts, "tokens": tokens}, True)
            return
        for account in accounts:
            print(" ".join(f"{k}={v}" for k, v in account.items()))
        for token in tokens:
            print(" ".join(f"{k}={v}" for k, v in token.items()))

    async def token_create(pool: Pool) -> None:
        issued = await OperatorService(pool).create_token(
            args.name, operators.parse_role(args.role), actor
        )
        print_record(issued.as_dict(), args.json)

    async def token_revoke(pool: Pool) -> None:
        await OperatorService(pool).revoke_token(args.token_id, actor, args.reason)
        print(f"revoked {args.token_id}")

    command = args.operator_cmd if args.operator_cmd != "token" else f"token {args.token_cmd}"
    jobs: dict[str, Callable[[Pool], Awaitable[None]]] = {
        "create": create,
        "disable": disable,
        "list": listing,
        "token create": token_create,
        "token revoke": token_revoke,
    }
    try:
        asyncio.run(with_pool(settings, jobs[command]))
    except operators.OperatorError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0
