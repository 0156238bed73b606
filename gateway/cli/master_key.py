"""`gateway master-key rotate --new-key-file F [--json]`: re-seal every secret stored under the
master key (merchants' HMAC secrets, webhook secrets current and previous) under a new one, in
one transaction (`gateway.services.master_key`). The old key is GATEWAY_MASTER_KEY (with
GATEWAY_MASTER_KEY_PREVIOUS, when set, also tried); the new one is read from F, or from one
line on standard input when F is `-`. Nothing is changed when any secret does not open with the
old key. Prints counts, never a secret.

Afterwards every gateway must run with the new key: set GATEWAY_MASTER_KEY to it (and
GATEWAY_MASTER_KEY_PREVIOUS to the old one while processes started with the old key may still
be running; once all have restarted, rotate once more to the same key, which re-seals what they
wrote meanwhile, and unset it). `make run` reads the key from var/master.key."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.context import load_settings, print_record, secret_box, with_pool

if TYPE_CHECKING:
    from gateway.store.db import Pool

EXIT_NOT_ROTATED = 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    master = sub.add_parser("master-key", help="manage the master key of secrets at rest")
    msub = master.add_subparsers(dest="master_key_cmd", required=True)
    rotate = msub.add_parser(
        "rotate", help="re-seal every stored secret under a new master key (one transaction)"
    )
    rotate.add_argument(
        "--new-key-file",
        required=True,
        help="file holding the new key (32 random bytes, URL-safe base64); - for standard input",
    )
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(fn=cmd_rotate)


def _read_new_key(source: str) -> str:
    if source == "-":
        return sys.stdin.readline().strip()
    try:
        return Path(source).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"gateway: cannot read {source}: {exc.strerror or exc}") from None


def cmd_rotate(args: argparse.Namespace) -> int:
    from gateway.auth.secretbox import SecretBox
    from gateway.services.master_key import SecretsDoNotOpen, rotate_master_key

    settings = load_settings()
    old = secret_box(settings)
    try:
        new = SecretBox(_read_new_key(args.new_key_file))
    except ValueError as exc:  # names GATEWAY_MASTER_KEY: say it is the new key that is wrong
        raise SystemExit(f"gateway: the new key is unusable: {exc}") from None

    async def rotate(pool: Pool) -> dict[str, int]:
        return await rotate_master_key(pool, old, new)

    try:
        counts = asyncio.run(with_pool(settings, rotate))
    except SecretsDoNotOpen as exc:
        print(f"gateway: nothing rotated: {exc}", file=sys.stderr)
        return EXIT_NOT_ROTATED
    print_record({**counts, "total": sum(counts.values())}, args.json)
    print(
        "gateway: secrets re-sealed under the new key; run every gateway with"
        " GATEWAY_MASTER_KEY set to it (the old key no longer opens them)",
        file=sys.stderr,
    )
    return 0
