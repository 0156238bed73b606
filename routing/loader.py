"""Reading the routing file: YAML (duplicate keys refused), `${NAME}` expansion (never of the
gateway's own settings: `RoutingEnv`), validation —
the schema, the checks across the file, and a check of each channel's adapter settings that the
caller injects (the gateway's: `config:` and key files, through its adapter) — and the holder
that swaps in a changed file atomically or keeps the old rules.

The only I/O in `routing/` is here and in `routing.files`: reading the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from routing.files import FileHolder, RulesFileError, read_yaml, validation_messages
from routing.schema import ChannelConfig, RoutingConfig, semantic_errors, semantic_warnings

__all__ = [
    "ChannelCheck",
    "LoadedRouting",
    "RoutingEnv",
    "RoutingError",
    "RoutingHolder",
    "expand_env",
    "load_routing",
    "parse_routing",
]


class RoutingError(RulesFileError):
    """An invalid routing file. `errors` are messages of the form ``path: problem``;
    `lines` maps a path to its line in the file (1-based) where it is known."""


ChannelCheck = Callable[[str, ChannelConfig], Sequence[str]]
"""Checks one channel beyond the schema, given its name and validated settings (the gateway's
builds its adapter's configuration, key files included). Returns its problems as
``path: problem`` with the path relative to the channel (``config.base_url: …``,
``timeout_ms: …``); nothing when the channel is fine."""


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
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    """path -> line in the file, for errors found after parsing (see `RoutingError`)."""


# ---- ${NAME} expansion ----------------------------------------------------------------------

_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

ALWAYS_ALLOWED = frozenset({"GATEWAY_PUBLIC_URL"})
"""Names every routing file may read: the shipped one points its channels at
`${GATEWAY_PUBLIC_URL}/sim/…`."""
NEVER_ALLOWED = frozenset({"PGPASSWORD", "PGPASSFILE"})
"""The database driver's own credentials (asyncpg reads them like libpq), never for a file
whose values are sent to channels."""
_GATEWAY_SETTINGS = "GATEWAY_"


class RoutingEnv(Mapping[str, str]):
    """The environment variables `${NAME}` in a routing file may read, and the rule on names.

    A routing file's values are sent to channels (`base_url`, account ids), so it must not
    read the gateway's own settings: its master key, admin token, database and Redis URLs
    (every `GATEWAY_*` name but GATEWAY_PUBLIC_URL), nor the driver's credentials. Every other
    name may be read — or, with `allow` (GATEWAY_ROUTING_ENV_ALLOW), only those names (and
    GATEWAY_PUBLIC_URL); the gateway's own settings are refused even when listed. A refused
    name is refused whether it is set or not, and its value is never read."""

    def __init__(self, values: Mapping[str, str], allow: Collection[str] | None = None) -> None:
        self._values = dict(values)
        self._allow = None if allow is None else frozenset(allow)

    def refusal(self, name: str) -> str | None:
        """Why `name` may not be read, or None when it may."""
        if name in ALWAYS_ALLOWED:
            return None
        if name.startswith(_GATEWAY_SETTINGS) or name in NEVER_ALLOWED:
            return "is the gateway's own setting; a routing file may not read it"
        if self._allow is not None and name not in self._allow:
            return "is not among the names GATEWAY_ROUTING_ENV_ALLOW allows"
        return None

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def expand_env(data: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[str]]:
    """Replace `${NAME}` (or `${NAME:-fallback}`) in every string value with the variable's
    value; `$${NAME}` is a literal `${NAME}`. Names are checked by `env`'s rule when it is a
    `RoutingEnv`, else by the default one. Returns (expanded data, errors); an error names a
    refused variable, never its value."""
    screened = env if isinstance(env, RoutingEnv) else RoutingEnv(env)
    errors: list[str] = []
    if isinstance(data, str):
        where = path or "(top)"

        def substitute(match: re.Match[str]) -> str:
            escaped, name, fallback = match.group(1), match.group(2), match.group(3)
            if escaped:
                return match.group(0)[1:]
            refusal = screened.refusal(name)
            if refusal is not None:
                errors.append(f"{where}: environment variable {name} {refusal}")
                return match.group(0)
            if name in screened:
                return screened[name]
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
            result[key], found = expand_env(value, screened, sub)
            errors += found
        return result, errors
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            item, found = expand_env(value, screened, f"{path}[{index}]")
            items.append(item)
            errors += found
        return items, errors
    return data, errors


# ---- validation -----------------------------------------------------------------------------


def validate_routing(
    data: Any, env: Mapping[str, str] | None = None, check: ChannelCheck | None = None
) -> RoutingConfig:
    """Validate already-parsed YAML data (with `${NAME}` expansion), then every channel with
    `check` when given. Raises RoutingError listing every problem found."""
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
        raise RoutingError(validation_messages(exc)) from None
    errors = semantic_errors(config)
    if check is not None:
        for name, channel in config.channels.items():
            errors += [f"channels.{name}.{problem}" for problem in check(name, channel)]
    if errors:
        raise RoutingError(errors)
    return config


def parse_routing(
    raw: bytes,
    path: str | Path = "<routing>",
    env: Mapping[str, str] | None = None,
    check: ChannelCheck | None = None,
) -> LoadedRouting:
    """Validate the bytes of a routing file (each channel with `check` too, when given).
    Raises RoutingError."""
    digest = hashlib.sha256(raw).hexdigest()
    data, lines = read_yaml(raw, RoutingError)
    try:
        config = validate_routing(data, env, check)
    except RoutingError as exc:
        raise RoutingError(exc.errors, lines) from None
    return LoadedRouting(
        config=config,
        version=digest[:12],
        path=Path(path),
        digest=digest,
        warnings=tuple(semantic_warnings(config)),
        lines=lines,
    )


def load_routing(
    path: str | Path, env: Mapping[str, str] | None = None, check: ChannelCheck | None = None
) -> LoadedRouting:
    """Read and validate a routing file. `env` (default `os.environ`) supplies `${NAME}`;
    `check` validates each channel beyond the schema. Raises RoutingError, whose `errors`
    name the path of each problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RoutingError([f"(file): cannot read {path}: {exc.strerror or exc}"]) from None
    return parse_routing(raw, path, env, check)


# ---- hot reload -----------------------------------------------------------------------------


class RoutingHolder(FileHolder[LoadedRouting]):
    """The routing rules in force (see `routing.files.FileHolder`); `${NAME}`s expand from
    `env`, and `check` validates every channel of each version before it may serve."""

    def __init__(
        self,
        path: str | Path,
        env: Mapping[str, str] | None = None,
        check: ChannelCheck | None = None,
    ) -> None:
        super().__init__(
            path,
            lambda p: load_routing(p, env, check),
            lambda raw, p: parse_routing(raw, p, env, check),
        )
