"""Print the figures of the last fault-injection runs (var/chaos/*.json) as Markdown, for
docs/reliability.md:  .venv/bin/python -m tests.chaos.report"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.chaos.harness import RESULTS_DIR

ROWS = [
    ("journeys", "merchant journeys"),
    ("requests", "HTTP requests (API + payer)"),
    ("no_answer", "requests with no answer (connection refused/reset)"),
    ("answers_5xx", "API answers 5xx"),
    ("payments", "payments"),
    ("payments_by_status", "payments by final status"),
    ("refunds_by_status", "refunds"),
    ("refund_rejected_exceeds", "refunds refused `refund_exceeds_amount`"),
    ("duplicate_create_answers_200", "duplicate creates answered 200 (same payment)"),
    ("longest_create_retry_s", "longest create retried (s)"),
    ("events", "events"),
    ("callbacks_expected", "callbacks expected (event x destination)"),
    ("callbacks_received", "callbacks received"),
    ("callbacks_duplicates", "duplicate callbacks received"),
    ("sim_paid_orders", "orders paid at the channel"),
    ("load_s", "load (s)"),
    ("settle_s", "settle (s)"),
    ("violations", "invariant violations"),
]


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, list):
        return (
            str(len(value))
            if not value or not isinstance(value[0], int | float)
            else (", ".join(str(v) for v in value))
        )
    return "-" if value is None else str(value)


def main(profile: str = "full") -> None:
    results = {}
    for path in sorted(RESULTS_DIR.glob(f"*-{profile}.json")):
        results[path.stem.removesuffix(f"-{profile}")] = json.loads(path.read_text())
    names = list(results)
    print("| | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for key, label in ROWS:
        print(f"| {label} | " + " | ".join(_cell(results[n].get(key)) for n in names) + " |")
    print()
    for name, result in results.items():
        extra = {k: v for k, v in result.items() if k not in dict(ROWS) and "_s" in k}
        if extra:
            print(
                f"- **{name}**: " + "; ".join(f"{k} {_cell(v)}" for k, v in sorted(extra.items()))
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
