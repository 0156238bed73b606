"""`gateway reconcile --channel NAME --date YYYY-MM-DD [--csv FILE]` and
`gateway settlement --date YYYY-MM-DD [--json]` (API.md §4)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.cli.context import load_settings, with_pool
from gateway.reconcile.matching import Outcome

if TYPE_CHECKING:
    from gateway.reconcile.service import Progress
    from gateway.settings import Settings
    from gateway.store.db import Pool
    from routing.loader import LoadedRouting


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the two commands to `gateway`'s subparsers."""
    rec = sub.add_parser(
        "reconcile", help="match a channel's daily statement against our payments and refunds"
    )
    rec.add_argument("--channel", required=True, help="channel name in the routing file")
    rec.add_argument("--date", required=True, type=_day, help="China (UTC+8) date, YYYY-MM-DD")
    rec.add_argument("--csv", metavar="FILE", help="also export the run's lines as CSV")
    rec.add_argument("--json", action="store_true", help="print the summary as JSON")
    rec.set_defaults(fn=cmd_reconcile)

    st = sub.add_parser("settlement", help="daily summary per merchant and channel")
    st.add_argument("--date", required=True, type=_day, help="China (UTC+8) date, YYYY-MM-DD")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_settlement)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _routing(settings: Settings) -> LoadedRouting:
    """The routing file as the gateway would load it, or exit 2 with its errors."""
    from gateway.services.channels import load_routing_file
    from routing.loader import RoutingError

    try:
        return load_routing_file(settings)
    except RoutingError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_reconcile(args: argparse.Namespace) -> int:
    import aiohttp

    from adapters.base import AdapterContext
    from adapters.registry import AdapterConfigError, build_adapter
    from gateway.reconcile import service
    from gateway.services.channels import adapter_config

    settings = load_settings()
    channels = _routing(settings).config.channels
    channel = channels.get(args.channel)
    if channel is None:
        print(
            f"gateway: no channel {args.channel!r} in {settings.routing_file}"
            f" (channels: {', '.join(channels)})",
            file=sys.stderr,
        )
        return 2
    # channels on the same adapter may share one merchant account, hence one statement
    siblings = [n for n, c in channels.items() if c.adapter == channel.adapter]
    progress = ProgressPrinter(sys.stderr, f"reconcile {args.channel} {args.date}")

    async def job(pool: Pool) -> int:
        async with aiohttp.ClientSession() as http:
            ctx = AdapterContext(http=http, config_dir=str(settings.config_dir))
            try:
                adapter = build_adapter(channel.adapter, args.channel, adapter_config(channel), ctx)
            except AdapterConfigError as exc:  # validated with the file, but keys can change
                print(f"gateway: channel {args.channel}: {exc}", file=sys.stderr)
                return 2
            try:
                report = await service.reconcile(
                    pool, adapter, args.date, lookup_channels=siblings, progress=progress
                )
            except service.ReconcileError as exc:
                await _audit_run(pool, args.channel, args.date, exc.run_id, {"error": str(exc)})
                print(f"gateway: reconcile failed (run {exc.run_id}): {exc}", file=sys.stderr)
                return 1
            finally:
                await adapter.aclose()
        counts = report.as_dict()
        await _audit_run(
            pool,
            args.channel,
            args.date,
            report.run_id,
            {k: counts[k] for k in ("statement_lines", "our_records", "replaced")},
        )
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            print(format_report(report.as_dict()))
        if csv_out is not None:
            count = await service.export_csv(pool, report.run_id, csv_out)
            print(f"exported {count} lines to {args.csv}", file=sys.stderr)
        return 0

    # opened before the run, so that a path we cannot write fails at once, not after it
    try:
        csv_out = open(args.csv, "w", newline="", encoding="utf-8") if args.csv else None  # noqa: SIM115
    except OSError as exc:
        print(f"gateway: cannot write {args.csv}: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(with_pool(settings, job))
    finally:
        if csv_out is not None:
            csv_out.close()
    if result != 0 and args.csv:
        Path(args.csv).unlink(missing_ok=True)
    return result


async def _audit_run(
    pool: Pool, channel: str, day: date, run_id: str, outcome: dict[str, Any]
) -> None:
    """The run as the command line's action (written after it: the run commits on its own)."""
    from gateway.services import audit

    await audit.record_alone(
        pool,
        audit.cli_actor(),
        "reconciliation.run",
        f"reconciliation_run:{run_id}",
        after={"channel": channel, "date": day.isoformat(), **outcome},
    )


def cmd_settlement(args: argparse.Namespace) -> int:
    from gateway.reconcile import service

    settings = load_settings()
    routing = _routing(settings)

    async def job(pool: Pool) -> dict[str, Any]:
        return await service.settlement_summary(pool, args.date, routing)

    summary = asyncio.run(with_pool(settings, job))
    print(json.dumps(summary, indent=2) if args.json else format_settlement(summary))
    return 0


# ---- output ---------------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    """A run's summary as a table: count and amounts (minor units) per outcome."""
    lines = [
        f"reconciliation {report['run_id']}: channel {report['channel']}, {report['date']}"
        f" (China time)",
        f"statement lines {report['statement_lines']}, our records {report['our_records']}"
        + (
            f", skipped {report['other_channel']} of other channels on this statement"
            if report["other_channel"]
            else ""
        ),
        "",
        f"{'outcome':<16} {'count':>9} {'ours':>16} {'theirs':>16}",
    ]
    for outcome in Outcome:
        t = report["outcomes"][outcome.value]
        lines.append(
            f"{outcome.value:<16} {t['count']:>9} {t['our_amount']:>16} {t['their_amount']:>16}"
        )
    discrepancies = sum(
        t["count"] for o, t in report["outcomes"].items() if o != Outcome.MATCHED.value
    )
    lines.append("")
    lines.append(
        "amounts in minor units (fen); "
        + (f"{discrepancies} discrepancies" if discrepancies else "no discrepancies")
        + (f"; replaced {report['replaced']} earlier run(s)" if report["replaced"] else "")
    )
    return "\n".join(lines)


def format_settlement(summary: dict[str, Any]) -> str:
    head = ("merchant", "channel", "cur", "count", "gross", "refunds", "fees", "net")
    rows = [head]
    for r in summary["data"]:
        fees = str(r["fees"]) if r["fee_known"] else f"{r['fees']}?"
        rows.append(
            (
                r["merchant_id"], r["channel"], r["currency"], str(r["count"]), str(r["gross"]),
                str(r["refunds"]), fees, str(r["net"]),
            )
        )  # fmt: skip
    for currency, t in summary["totals"].items():
        rows.append(
            (
                "total", "", currency, str(t["count"]), str(t["gross"]), str(t["refunds"]),
                str(t["fees"]), str(t["net"]),
            )
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    text = [f"settlement {summary['date']} (China time), amounts in minor units"]
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        text.append("  ".join(cells).rstrip())
    if any(not r["fee_known"] for r in summary["data"]):
        text.append("?: the channel is not in the routing file; its fees are not counted")
    if not summary["data"]:
        text.append("(no payments or refunds that day)")
    return "\n".join(text)


class ProgressPrinter:
    """Progress on stderr for long runs: nothing during the first second; then a line that
    rewrites itself on a terminal, or a line every 10 s otherwise."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False
        self.tty = stream.isatty()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self.started < 1.0 and not (progress.done and self.shown):
            return
        if not progress.done and now - self.last < (0.2 if self.tty else 10.0):
            return
        self.last = now
        self.shown = True
        rate = progress.lines / max(now - self.started, 1e-9)
        expected = progress.expected
        share = f" / ~{expected:,} ({min(progress.lines / expected, 1):.0%})" if expected else ""
        text = f"{self.label}: {progress.lines:,} lines{share}, {rate:,.0f}/s"
        if progress.done:
            text += ", done"
        if self.tty:
            self.stream.write("\r" + text.ljust(79) + ("\n" if progress.done else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
