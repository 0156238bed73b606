"""Reading the risk file, and the holder that swaps in a changed file atomically or keeps the
old rules: the routing file's behaviour (`routing.loader`), whose YAML reader (duplicate keys
refused), line map and error wording this reuses, so both files fail alike."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError

from gateway.risk.rules import RiskRules
from gateway.risk.schema import RiskConfig, semantic_errors
from routing.loader import (
    FileHolder,
    RoutingError,
    _format_validation,
    _line_map,
    _Loader,
    _yaml_error,
)

__all__ = ["LoadedRisk", "RiskError", "RiskHolder", "load_risk", "parse_risk"]


class RiskError(RoutingError):
    """An invalid risk file: `errors` are ``path: problem`` messages, `line_of` finds their
    line (the shape of `RoutingError`)."""


@dataclass(frozen=True, slots=True)
class LoadedRisk:
    rules: RiskRules
    version: str
    """The first 12 hex digits of the file's SHA-256."""
    path: Path
    digest: str
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def config(self) -> RiskConfig:
        return self.rules.config


def parse_risk(raw: bytes, path: str | Path = "<risk>") -> LoadedRisk:
    """Validate the bytes of a risk file. Raises RiskError."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RiskError([f"(file): not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise RiskError([f"(yaml): {_yaml_error(exc)}"]) from None
    lines = _line_map(node)
    if data is None:
        raise RiskError(["(top): the file is empty (write `{}` for no rules)"])
    if not isinstance(data, dict):
        raise RiskError(
            ["(top): must be a mapping with blocklists, amount_limits, daily_caps, velocity"]
        )
    try:
        config = RiskConfig.model_validate(data)
    except ValidationError as exc:
        raise RiskError(_format_validation(exc), lines) from None
    errors = semantic_errors(config)
    if errors:
        raise RiskError(errors, lines)
    return LoadedRisk(rules=RiskRules(config), version=digest[:12], path=Path(path), digest=digest)


def load_risk(path: str | Path) -> LoadedRisk:
    """Read and validate a risk file. Raises RiskError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RiskError([f"(file): cannot read {path}: {exc.strerror or exc}"]) from None
    return parse_risk(raw, path)


class RiskHolder(FileHolder[LoadedRisk]):
    """The risk rules in force, swapped atomically when the file changes to a valid one (the
    same reload rules as routing: see `routing.loader.FileHolder`)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, load_risk, parse_risk)
