"""Only gateway/store holds SQL: no string literal elsewhere in gateway/ reads like a statement,
and nothing elsewhere calls asyncpg's query methods. (gateway/embedded.py bootstraps its own
PostgreSQL server with psql, before there is a pool: it is the one exception.)"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[3] / "gateway"
ALLOWED = {GATEWAY / "embedded.py"}

SQL = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bSELECT\s+(?:1\b|pg_\w+\s*\(|\$\d)|\bINSERT\s+INTO\b"
    r"|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bFOR\s+UPDATE\b|\bRETURNING\b"
    r"|\b(?:CREATE|ALTER|DROP)\s+(?:TABLE|INDEX|UNIQUE)\b|\bpg_notify\b|\bpg_advisory\w*\b"
    r"|\bON\s+CONFLICT\b"
)
QUERY_METHODS = {"fetch", "fetchrow", "fetchval", "executemany", "copy_records_to_table"}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes: prose, which may name SQL."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                found.add(id(body[0].value))
    return found


def findings(source: str) -> Iterator[tuple[int, str]]:
    """(line, what) for each SQL-looking string literal and each asyncpg query call."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in prose and SQL.search(node.value):
                yield node.lineno, node.value[:60]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in QUERY_METHODS
        ):
            yield node.lineno, f".{node.func.attr}(…)"


def _outside_store() -> list[Path]:
    return sorted(
        path
        for path in GATEWAY.rglob("*.py")
        if GATEWAY / "store" not in path.parents and path not in ALLOWED
    )


@pytest.mark.parametrize("path", _outside_store(), ids=lambda p: str(p.relative_to(GATEWAY)))
def test_no_sql_outside_the_store(path: Path) -> None:
    assert list(findings(path.read_text())) == []


@pytest.mark.parametrize(
    "source",
    [
        'q = "SELECT status FROM payment_attempts WHERE id = $1"',
        'await conn.execute("SELECT 1 FROM merchants WHERE id = $1 FOR UPDATE", m)',
        'await pool.fetchval("SELECT 1")',
        "await conn.execute(\"SELECT pg_notify($1, '')\", channel)",
        'sql = f"UPDATE payments SET {sets} WHERE id = $1"',
        'x = "INSERT INTO events (id) VALUES ($1)"',
        "rows = await db.fetch(QUERY)",
    ],
)
def test_the_check_finds_sql(source: str) -> None:
    assert list(findings(source))


@pytest.mark.parametrize(
    "source",
    [
        '"""Claimed with `SELECT … FOR UPDATE SKIP LOCKED` under a lease."""',
        'detail = "Select a payment method from the list."',
        'msg = "Only failed deliveries can be retried (this one is pending)."',
        "await redis.execute_command('SET', key, 1)",
    ],
)
def test_the_check_leaves_prose_alone(source: str) -> None:
    assert list(findings(source)) == []
