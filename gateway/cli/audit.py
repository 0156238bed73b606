"""`gateway audit verify`: check the audit log's hash chain from its first entry to its last.
Exit 0 when it is whole (printing the last id and hash: keep them elsewhere, since removing
the last entries of a chain leaves no trace in it), 1 naming the first entry that is not."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from gateway.cli.context import load_settings, with_pool

if TYPE_CHECKING:
    from gateway.domain.audit import ChainReport
    from gateway.store.db import Pool


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser("audit", help="the audit log")
    asub = audit.add_subparsers(dest="audit_cmd", required=True)
    asub.add_parser("verify", help="check the hash chain of the whole log")
    audit.set_defaults(fn=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway.services import audit

    async def verify(pool: Pool) -> ChainReport:
        return await audit.verify(pool)

    report = asyncio.run(with_pool(load_settings(), verify))
    if report.broken is not None:
        print(
            f"audit log broken at entry {report.broken.entry_id}: {report.broken.problem}"
            f" ({report.entries} entries before it are whole)",
            file=sys.stderr,
        )
        return 1
    if report.last_id is None:
        print("audit log whole: no entries yet")
    else:
        print(
            f"audit log whole: {report.entries} entries, the last {report.last_id}"
            f" with hash {report.last_hash}"
        )
    return 0
