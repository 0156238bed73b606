"""What every rules file shares (the routing file, and the gateway's risk file): the YAML reader
(duplicate keys refused), messages that name the path of each problem and its line, and
`FileHolder`, which swaps in a changed file atomically or keeps the rules in force.

The only I/O in `routing/` is here and in `routing.loader`: reading the file.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

__all__ = ["FileHolder", "RulesFileError", "read_yaml", "validation_messages"]


class RulesFileError(Exception):
    """An invalid rules file. `errors` are messages of the form ``path: problem``; `lines`
    maps a path to its line in the file (1-based) where it is known."""

    def __init__(self, errors: list[str], lines: Mapping[str, int] | None = None) -> None:
        self.errors = list(errors)
        self.lines = dict(lines or {})
        super().__init__("; ".join(self.errors))

    def line_of(self, error: str) -> int | None:
        """The file line an error points at (its path, or the closest enclosing one)."""
        path = error.split(": ", 1)[0]
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None


E = TypeVar("E", bound=RulesFileError)


# ---- YAML -----------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = line
        except TypeError:  # an unhashable key: let PyYAML report it
            pass
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "yaml"
    text = f"{context}: {problem}" if context and problem != context else str(problem)
    return f"{where}: {text}"


def _line_map(
    node: yaml.Node | None, path: str = "", lines: dict[str, int] | None = None
) -> dict[str, int]:
    """path (as in error messages) -> 1-based line of that value's key or item."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            lines.setdefault(sub, key_node.start_mark.line + 1)
            _line_map(value_node, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub = f"{path}[{index}]"
            lines.setdefault(sub, item.start_mark.line + 1)
            _line_map(item, sub, lines)
    return lines


def read_yaml(raw: bytes, error: type[E]) -> tuple[Any, dict[str, int]]:
    """The data in a file's bytes (UTF-8 YAML, a key given twice in one mapping refused) and
    the line of each path in it. Raises `error` (a RulesFileError) naming the problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error([f"(file): not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        node = yaml.compose(text, Loader=_StrictLoader)
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise error([f"(yaml): {_yaml_error(exc)}"]) from None
    return data, _line_map(node)


# ---- validation messages --------------------------------------------------------------------

_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top)"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    message = error["msg"].removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def validation_messages(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``path: problem`` (paths as the line map spells them), once each."""
    seen: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        line = f"{_path(loc)}: {_message(error)}"
        if line not in seen:
            seen.append(line)
    return seen


# ---- hot reload -----------------------------------------------------------------------------


class _Versioned(Protocol):
    @property
    def digest(self) -> str: ...


V = TypeVar("V", bound=_Versioned)


class FileHolder(Generic[V]):
    """Rules from a file, swapped atomically when the file changes to a valid version.

    `load(path)` reads and parses the file and `parse(raw, path)` parses bytes already read
    (construction parses what it read, and calls `load` only for the error of a file it could
    not read); both raise `RulesFileError` (or a subclass). Construction loads the file and
    raises if it is missing or invalid (refuse to start). Readers take `holder.current` once
    per decision; `reload()` replaces that reference in one assignment, so a decision always
    sees one whole version.
    """

    def __init__(
        self,
        path: str | Path,
        load: Callable[[Path], V],
        parse: Callable[[bytes, Path], V],
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._lock = threading.Lock()
        try:
            raw: bytes | None = self.path.read_bytes()
        except OSError:
            raw = None  # `load` raises its own error, naming the file
        self._current = load(self.path) if raw is None else parse(raw, self.path)
        self.last_read = raw
        """The file's bytes as last read (at construction or by `reload`), whether they were
        loaded or refused; None when it could not be read (the gateway audits each)."""
        self._refused: str | None = None
        self.last_error: str | None = None
        """The latest refusal (kept after a later success: see `stale`)."""
        self.last_error_at: datetime | None = None
        self.reload_failures = 0
        self.reloads = 0

    @property
    def current(self) -> V:
        return self._current

    @property
    def stale(self) -> bool:
        """True while the file on disk is one that was refused (the rules in force are older)."""
        return self._refused is not None

    def reload(self, *, force: bool = False, prepare: Callable[[V], None] | None = None) -> bool:
        """Re-read the file; swap in its rules if its content changed and is valid. Returns
        whether the rules in force changed.

        An invalid (or unreadable) file is refused whole, once per distinct content:
        `last_error`, `last_error_at` and `reload_failures` record it, and the old rules keep
        serving. `force` (an operator's explicit reload) validates a refused content again —
        what it names beside the file, such as key files, may have been fixed since.
        `prepare(new)` runs after the file parsed and before the swap (the gateway builds the
        new adapters there); if it raises RulesFileError the file is refused like any other.
        """
        with self._lock:
            if force:
                self._refused = None
            try:
                raw = self.last_read = self.path.read_bytes()
            except OSError as exc:
                self.last_read = None
                message = f"(file): cannot read {self.path}: {exc.strerror or exc}"
                self._refuse(f"oserror:{message}", message)
                return False
            digest = hashlib.sha256(raw).hexdigest()
            if digest == self._current.digest:
                self._refused = None
                return False
            if digest == self._refused:
                return False
            try:
                loaded = self._parse(raw, self.path)
                if prepare is not None:
                    prepare(loaded)
            except RulesFileError as exc:
                self._refuse(digest, str(exc))
                return False
            self._current = loaded
            self._refused = None
            self.reloads += 1
            return True

    def _refuse(self, key: str, message: str) -> None:
        if key == self._refused:
            return
        self._refused = key
        self.last_error = message
        self.last_error_at = datetime.now(UTC)
        self.reload_failures += 1
