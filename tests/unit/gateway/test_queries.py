"""The named statements: how a file reads, and that every statement is one store module's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.store.queries import QUERIES, QueryFileError, parse

STORE = Path(__file__).resolve().parents[3] / "gateway" / "store"


def test_a_file_reads_as_named_statements() -> None:
    text = """-- what the file holds

-- name: first
-- what it does
SELECT 1;

-- name: second
UPDATE t
   SET a = 1
 WHERE id = $1;
"""
    assert parse([("f.sql", text)]) == {
        "first": "SELECT 1",
        "second": "UPDATE t\n   SET a = 1\n WHERE id = $1",
    }


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ([("f.sql", "SELECT 1;\n-- name: x\nSELECT 2;")], "before the first"),
        ([("f.sql", "-- name: x\n-- only words\n")], "has no statement"),
        ([("f.sql", "-- name: x\nSELECT 1;"), ("g.sql", "-- name: x\nSELECT 2;")], "twice"),
    ],
)
def test_a_malformed_file_is_refused(files: list[tuple[str, str]], error: str) -> None:
    with pytest.raises(QueryFileError, match=error):
        parse(files)


def test_every_statement_is_taken_by_exactly_one_store_module() -> None:
    taken: list[str] = []
    for module in STORE.glob("*.py"):
        taken += re.findall(r'\bquery\("([a-z0-9_]+)"\)', module.read_text())
    assert sorted(taken) == sorted(QUERIES)
