"""Reading the risk file, and the holder that swaps in a changed file atomically or keeps the
old rules: what the routing file does, through the same `routing.files` (YAML reader with
duplicate keys refused, line map, error wording, `FileHolder`), so both files fail alike."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from gateway.risk.rules import RiskRules
from gateway.risk.schema import RiskConfig, semantic_errors
from routing.files import FileHolder, RulesFileError, read_yaml, validation_messages

__all__ = ["LoadedRisk", "RiskError", "RiskHolder", "load_risk", "parse_risk"]


class RiskError(RulesFileError):
    """An invalid risk file: `errors` are ``path: problem`` messages, `line_of` finds their
    line (as for the routing file)."""


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
    data, lines = read_yaml(raw, RiskError)
    if data is None:
        raise RiskError(["(top): the file is empty (write `{}` for no rules)"])
    if not isinstance(data, dict):
        raise RiskError(
            ["(top): must be a mapping with blocklists, amount_limits, daily_caps, velocity"]
        )
    try:
        config = RiskConfig.model_validate(data)
    except ValidationError as exc:
        raise RiskError(validation_messages(exc), lines) from None
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
    same reload rules as routing: see `routing.files.FileHolder`)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, load_risk, parse_risk)
