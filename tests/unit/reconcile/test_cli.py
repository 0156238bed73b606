"""The reconcile command's progress indicator and its settlement table (gateway/cli/reconcile.py)."""

from __future__ import annotations

import io

from gateway.cli.reconcile import ProgressPrinter, format_settlement
from gateway.reconcile.service import Progress


def test_progress_is_quiet_for_short_runs_and_shown_for_long_ones() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, "reconcile bank_icbc 2024-05-01")
    printer(Progress(1000, 100_000))
    printer(Progress(2000, 100_000, done=True))
    assert out.getvalue() == ""  # done within a second: nothing

    printer.started -= 30  # a run that has been going for 30 s
    printer(Progress(45_000, 100_000))
    printer(Progress(46_000, 100_000))  # within 10 s of the last line (not a terminal)
    printer(Progress(100_000, 100_000, done=True))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("reconcile bank_icbc 2024-05-01: 45,000 lines / ~100,000 (45%)")
    assert lines[1].endswith(", done") and "100,000 lines" in lines[1]


def test_settlement_table() -> None:
    text = format_settlement(
        {
            "date": "2024-05-01",
            "data": [
                {
                    "merchant_id": "mch_1", "channel": "alipay_main", "currency": "CNY",
                    "count": 2, "gross": 12000, "refund_count": 1, "refunds": 3000, "fees": 72,
                    "net": 8928, "fee_known": True,
                },
                {
                    "merchant_id": "mch_1", "channel": "gone", "currency": "CNY", "count": 1,
                    "gross": 100, "refund_count": 0, "refunds": 0, "fees": 0, "net": 100,
                    "fee_known": False,
                },
            ],
            "totals": {
                "CNY": {
                    "count": 3, "gross": 12100, "refund_count": 1, "refunds": 3000,
                    "fees": 72, "net": 9028,
                }
            },
        }
    )  # fmt: skip
    rows = [line.split() for line in text.splitlines()]
    assert rows[1] == ["merchant", "channel", "cur", "count", "gross", "refunds", "fees", "net"]
    assert rows[2] == ["mch_1", "alipay_main", "CNY", "2", "12000", "3000", "72", "8928"]
    assert rows[3][-2:] == ["0?", "100"]
    assert rows[4] == ["total", "CNY", "3", "12100", "3000", "72", "9028"]
    assert "not in the routing file" in text
