"""Reading the routing file: YAML (duplicate keys refused), `${NAME}` expansion, validation,
and the holder that swaps in a changed file atomically or keeps the old rules.

The only I/O in `routing/` is here: reading the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from routing.schema import RoutingConfig, semantic_errors, semantic_warnings

__all__ = [
    "LoadedRouting",
    "RoutingError",
    "RoutingHolder",
    "expand_env",
    "load_routing",
    "parse_routing",
]


class RoutingError(Exception):
    """An invalid routing file. `errors` are messages of the form ``path: problem``;
    `lines` maps a path to its line in the file (1-based) where it is known."""

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


@dataclass(frozen=True, slots=True)
class LoadedRouting:
    config: RoutingConfig
    version: str
    """The first 12 hex digits of the file's SHA-256: recorded on every attempt."""
    path: Path
    digest: str = ""
    """The whole SHA-256 of the file's bytes."""
    warnings: tuple[str, ...] = ()
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))


# ---- YAML -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
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


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


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


# ---- ${NAME} expansion ----------------------------------------------------------------------

_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[str]]:
    """Replace `${NAME}` (or `${NAME:-fallback}`) in every string value with the variable's
    value; `$${NAME}` is a literal `${NAME}`. Returns (expanded data, errors)."""
    errors: list[str] = []
    if isinstance(data, str):
        where = path or "(top)"

        def substitute(match: re.Match[str]) -> str:
            escaped, name, fallback = match.group(1), match.group(2), match.group(3)
            if escaped:
                return match.group(0)[1:]
            if name in env:
                return env[name]
            if fallback is not None:
                return fallback
            errors.append(f"{where}: environment variable {name} is not set")
            return match.group(0)

        expanded = _VAR.sub(substitute, data)
        leftover = _VAR.sub("", data).replace("$${", "")
        if "${" in leftover:
            errors.append(f"{where}: malformed variable reference in {data!r} (use ${{NAME}})")
        return expanded, errors
    if isinstance(data, dict):
        result = {}
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            result[key], found = expand_env(value, env, sub)
            errors += found
        return result, errors
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            item, found = expand_env(value, env, f"{path}[{index}]")
            items.append(item)
            errors += found
        return items, errors
    return data, errors


# ---- validation -----------------------------------------------------------------------------

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


def _format_validation(exc: ValidationError) -> list[str]:
    seen: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        line = f"{_path(loc)}: {_message(error)}"
        if line not in seen:
            seen.append(line)
    return seen


def validate_routing(data: Any, env: Mapping[str, str] | None = None) -> RoutingConfig:
    """Validate already-parsed YAML data (with `${NAME}` expansion). Raises RoutingError."""
    if data is None:
        raise RoutingError(["(top): the file is empty"])
    if not isinstance(data, dict):
        raise RoutingError(["(top): must be a mapping with channels, rules, default, settings"])
    expanded, errors = expand_env(data, os.environ if env is None else env)
    if errors:
        raise RoutingError(errors)
    try:
        config = RoutingConfig.model_validate(expanded)
    except ValidationError as exc:
        raise RoutingError(_format_validation(exc)) from None
    errors = semantic_errors(config)
    if errors:
        raise RoutingError(errors)
    return config


def parse_routing(
    raw: bytes, path: str | Path = "<routing>", env: Mapping[str, str] | None = None
) -> LoadedRouting:
    """Validate the bytes of a routing file. Raises RoutingError."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RoutingError([f"(file): not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise RoutingError([f"(yaml): {_yaml_error(exc)}"]) from None
    lines = _line_map(node)
    try:
        config = validate_routing(data, env)
    except RoutingError as exc:
        raise RoutingError(exc.errors, lines) from None
    return LoadedRouting(
        config=config,
        version=digest[:12],
        path=Path(path),
        digest=digest,
        warnings=tuple(semantic_warnings(config)),
    )


def load_routing(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedRouting:
    """Read and validate a routing file. `env` (default `os.environ`) supplies `${NAME}`.
    Raises RoutingError, whose `errors` name the path of each problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RoutingError([f"(file): cannot read {path}: {exc.strerror or exc}"]) from None
    return parse_routing(raw, path, env)


# ---- hot reload -----------------------------------------------------------------------------


class _Versioned(Protocol):
    @property
    def digest(self) -> str: ...


V = TypeVar("V", bound=_Versioned)


class FileHolder(Generic[V]):
    """Rules from a file, swapped atomically when the file changes to a valid version.

    `load(path)` reads and parses the file and `parse(raw, path)` parses bytes already read;
    both raise `RoutingError` (or a subclass). Construction loads the file and raises if it is
    missing or invalid (refuse to start). Readers take `holder.current` once per decision;
    `reload()` replaces that reference in one assignment, so a decision always sees one whole
    version.
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
        self._current = load(self.path)
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

    def reload(self) -> bool:
        """Re-read the file; swap in its rules if its content changed and is valid. Returns
        whether the rules in force changed. An invalid (or unreadable) file is refused whole,
        once per distinct content: `last_error`, `last_error_at` and `reload_failures` record
        it, and the old rules keep serving."""
        with self._lock:
            try:
                raw = self.path.read_bytes()
            except OSError as exc:
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
            except RoutingError as exc:
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


class RoutingHolder(FileHolder[LoadedRouting]):
    """The routing rules in force (see `FileHolder`); `${NAME}`s expand from `env`."""

    def __init__(self, path: str | Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(
            path, lambda p: load_routing(p, env), lambda raw, p: parse_routing(raw, p, env)
        )
