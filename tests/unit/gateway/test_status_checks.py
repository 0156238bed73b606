"""Migrations 0006 (the columns of 0001-0005) and 0008 (merchants.status) let each status column
hold exactly its enum's values: the two are compared here, so that a state added to an enum
without a migration (or the other way round) fails."""

from __future__ import annotations

import enum
import re
from pathlib import Path

from gateway.domain.states import (
    AttemptStatus,
    DeliveryStatus,
    EndpointStatus,
    IdempotencyState,
    KeyStatus,
    MerchantStatus,
    NotificationOutcome,
    PaymentStatus,
    RefundStatus,
    RunStatus,
)
from gateway.reconcile.matching import Outcome

MIGRATIONS = Path(__file__).resolve().parents[3] / "gateway/store/migrations"
STATUS_MIGRATIONS = ("0006_status_checks.sql", "0008_merchant_status_limits.sql")
"""The migrations that declare status CHECKs (each one `ALTER TABLE … ADD CONSTRAINT …`)."""

STATUS_COLUMNS: dict[tuple[str, str], type[enum.StrEnum]] = {
    ("payments", "status"): PaymentStatus,
    ("payment_attempts", "status"): AttemptStatus,
    ("refunds", "status"): RefundStatus,
    ("callback_deliveries", "status"): DeliveryStatus,
    ("webhook_endpoints", "status"): EndpointStatus,
    ("merchant_keys", "status"): KeyStatus,
    ("idempotency_keys", "state"): IdempotencyState,
    ("channel_notifications", "outcome"): NotificationOutcome,
    ("reconciliation_runs", "status"): RunStatus,
    ("reconciliation_lines", "outcome"): Outcome,
    ("merchants", "status"): MerchantStatus,
}
"""Every status column of the schema and its enum (the integration test
tests/integration/test_schema.py checks the live schema against this)."""

_CHECK = re.compile(
    r"ALTER TABLE (\w+)\s+(?:DROP CONSTRAINT (\w+),\s+)?ADD CONSTRAINT (\w+)\s+"
    r"CHECK \((\w+) IN \(([^)]*)\)\);",
    re.DOTALL,
)


def declared_checks(sql: str) -> dict[tuple[str, str], set[str]]:
    """(table, column) -> allowed values of each `ALTER TABLE … CHECK (col IN (…))`."""
    found: dict[tuple[str, str], set[str]] = {}
    for table, dropped, added, column, values in _CHECK.findall(sql):
        assert added == f"{table}_{column}_check", added
        assert dropped in ("", added), dropped
        assert (table, column) not in found, (table, column)
        found[(table, column)] = set(re.findall(r"'([^']*)'", values))
    return found


def status_sql() -> str:
    return "\n".join((MIGRATIONS / name).read_text() for name in STATUS_MIGRATIONS)


def test_the_migrations_allow_exactly_each_enums_values() -> None:
    sql = status_sql()
    declared = declared_checks(sql)
    # nothing the pattern did not read (0008's other constraint is not a status column's)
    assert sql.count("ADD CONSTRAINT") - sql.count("ADD CONSTRAINT merchants_rate_limits") == len(
        declared
    )
    assert set(declared) == set(STATUS_COLUMNS)
    for column, states in STATUS_COLUMNS.items():
        assert declared[column] == {s.value for s in states}, column


def test_a_drift_is_caught() -> None:
    sql = status_sql().replace("'failed_over', ", "")
    assert declared_checks(sql)[("payment_attempts", "status")] != {s.value for s in AttemptStatus}
