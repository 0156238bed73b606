"""The gateway's SQL: named statements in `gateway/store/sql/*.sql`, read once at import (as
procrastinate keeps its queries). Each statement starts at a `-- name: <name>` line; the comment
lines right after it say what it does, and the statement runs to the next name or the file's end.
Store modules take theirs with `query("<name>")` when they are imported, so a missing name fails
at import, not in the middle of a request. Only `gateway.store` holds SQL (a test checks the rest
of `gateway/` for it)."""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterable, Mapping

_NAME = re.compile(r"^-- name: ([a-z][a-z0-9_]*)\s*$")


class QueryFileError(ValueError):
    """A statement file that does not read as named statements."""


def parse(files: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Named statements of `(file name, text)` pairs. Leading comments and a trailing `;` are
    dropped; names are unique across files."""
    queries: dict[str, str] = {}
    for file_name, text in files:
        sections: list[tuple[str, list[str]]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            match = _NAME.match(line)
            if match is not None:
                sections.append((match.group(1), []))
            elif sections:
                sections[-1][1].append(line)
            elif line.strip() and not line.lstrip().startswith("--"):
                raise QueryFileError(f"{file_name}:{number}: SQL before the first -- name:")
        for name, lines in sections:
            body = [line for line in lines if line.strip()]
            while body and body[0].lstrip().startswith("--"):
                body.pop(0)
            sql = "\n".join(body).strip().removesuffix(";").rstrip()
            if not sql:
                raise QueryFileError(f"{file_name}: {name} has no statement")
            if name in queries:
                raise QueryFileError(f"{file_name}: {name} is named twice")
            queries[name] = sql
    return queries


def _read() -> dict[str, str]:
    folder = importlib.resources.files("gateway.store").joinpath("sql")
    files = sorted(
        (entry.name, entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return parse(files)


QUERIES: Mapping[str, str] = _read()


def query(name: str) -> str:
    """The statement named `name` (KeyError when there is none)."""
    return QUERIES[name]
