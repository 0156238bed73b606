"""`gateway merchant create | rotate-key | revoke-key | rotate-webhook-secret` (API.md §4), each
audited as `cli:<os user>`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.context import load_settings, print_record, secret_box, with_pool

if TYPE_CHECKING:
    from gateway.store.db import Pool

KEY_TYPES = ("hmac-sha256", "ed25519", "rsa-sha256")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    merchant = sub.add_parser("merchant", help="manage merchants and their keys")
    msub = merchant.add_subparsers(dest="merchant_cmd", required=True)
    create = msub.add_parser("create", help="create a merchant and its first key")
    create.add_argument("--name", required=True)
    create.add_argument("--key-type", choices=KEY_TYPES, default="hmac-sha256")
    create.add_argument("--public-key", help="PEM SubjectPublicKeyInfo file (ed25519, rsa)")
    create.add_argument("--json", action="store_true")
    rotate = msub.add_parser("rotate-key", help="add a second active key")
    rotate.add_argument("--merchant", required=True)
    rotate.add_argument("--key-type", choices=KEY_TYPES, default="hmac-sha256")
    rotate.add_argument("--public-key")
    rotate.add_argument("--json", action="store_true")
    revoke = msub.add_parser("revoke-key", help="revoke a key")
    revoke.add_argument("--key-id", required=True)
    revoke.add_argument("--reason", help="why (kept in the audit log)")
    webhook = msub.add_parser(
        "rotate-webhook-secret",
        help="issue a new webhook secret; the old one also signs during a grace period",
    )
    webhook.add_argument("--merchant", required=True)
    webhook.add_argument(
        "--grace-hours",
        type=float,
        default=24.0,
        help="hours the previous secret keeps signing beside the new one (default 24; 0: none)",
    )
    webhook.add_argument("--json", action="store_true")
    merchant.set_defaults(fn=cmd_merchant)


def _read_public_key(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"gateway: cannot read {path}: {exc}") from None


def cmd_merchant(args: argparse.Namespace) -> int:
    from gateway.auth.signature import KeyType
    from gateway.services import merchants
    from gateway.services.audit import cli_actor
    from gateway.services.webhook_secrets import rotate_webhook_secret

    settings = load_settings()
    box = secret_box(settings)
    actor = cli_actor()

    async def create(pool: Pool) -> None:
        issued, webhook_secret = await merchants.create_merchant(
            pool,
            box,
            args.name,
            KeyType(args.key_type),
            _read_public_key(args.public_key),
            audit_as=actor,
        )
        print_record({**issued.as_dict(), "webhook_secret": webhook_secret}, args.json)

    async def rotate(pool: Pool) -> None:
        issued = await merchants.rotate_key(
            pool,
            box,
            args.merchant,
            KeyType(args.key_type),
            _read_public_key(args.public_key),
            audit_as=actor,
        )
        print_record(issued.as_dict(), args.json)

    async def revoke(pool: Pool) -> None:
        await merchants.revoke_key(pool, args.key_id, audit_as=actor, reason=args.reason)
        print(f"revoked {args.key_id}")

    async def rotate_webhook(pool: Pool) -> None:
        rotated = await rotate_webhook_secret(
            pool, box, args.merchant, args.grace_hours, audit_as=actor
        )
        print_record(rotated.as_dict(), args.json)

    jobs: dict[str, Callable[[Pool], Awaitable[None]]] = {
        "create": create,
        "rotate-key": rotate,
        "revoke-key": revoke,
        "rotate-webhook-secret": rotate_webhook,
    }
    try:
        asyncio.run(with_pool(settings, jobs[args.merchant_cmd]))
    except merchants.MerchantError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0
