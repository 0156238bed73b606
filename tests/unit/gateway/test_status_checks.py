"""Migration 0006 lets each status column hold exactly its enum's values, and later migrations
replace a column's constraint when its enum changes (or add one for a new column): the last
declaration of each column, over the migrations in order, is compared with its enum here, so
that a state added to an enum without a migration (or the other way round) fails."""

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
MIGRATION = MIGRATIONS / "0006_status_checks.sql"

STATUS_COLUMNS: dict[tuple[str, str], type[enum.StrEnum]] = {
    ("payments", "status"): PaymentStatus,
    ("payment_attempts", "status"): AttemptStatus,
    ("refunds", "status"): RefundStatus,
    ("callback_deliveries", "status"): DeliveryStatus,
    ("webhook_endpoints", "status"): EndpointStatus,
    ("merchant_keys", "status"): KeyStatus,
    ("idempotency_keys", "state"): IdempotencyState,
    ("channel_notification_counts", "outcome"): NotificationOutcome,
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


def schema_checks(texts: list[str]) -> dict[tuple[str, str], set[str]]:
    """The status checks in force after migrations `texts` (in order): a later declaration of a
    column replaces the earlier one; a dropped table takes its checks with it."""
    found: dict[tuple[str, str], set[str]] = {}
    for sql in texts:
        # nothing the pattern did not read (an inline CHECK of a CREATE TABLE is not read: the
        # live schema's test, tests/integration/test_schema.py, finds that one)
        added = re.findall(r"ADD CONSTRAINT \w+\s+CHECK \(\w+ IN \(", sql)
        assert len(added) == len(declared_checks(sql))
        found |= declared_checks(sql)
        for table in re.findall(r"DROP TABLE (\w+)", sql):
            found = {key: values for key, values in found.items() if key[0] != table}
    return found


def shipped() -> list[str]:
    return [path.read_text() for path in sorted(MIGRATIONS.glob("*.sql"))]


def test_the_migrations_allow_exactly_each_enums_values() -> None:
    declared = schema_checks(shipped())
    assert set(declared) == set(STATUS_COLUMNS)
    for column, states in STATUS_COLUMNS.items():
        assert declared[column] == {s.value for s in states}, column


def test_a_drift_is_caught() -> None:
    texts = [sql.replace("'failed_over', ", "") for sql in shipped()]
    assert schema_checks(texts)[("payment_attempts", "status")] != {s.value for s in AttemptStatus}


def test_a_later_migration_replaces_an_earlier_check() -> None:
    later = """ALTER TABLE payments
    DROP CONSTRAINT payments_status_check,
    ADD CONSTRAINT payments_status_check
        CHECK (status IN ('pending', 'succeeded'));"""
    assert schema_checks([MIGRATION.read_text(), later])[("payments", "status")] == {
        "pending",
        "succeeded",
    }
