"""The metric names a PromQL expression (or a Grafana query over one) reads.

Not a parser: strings, label matchers, ranges, grouping clauses, numbers and durations are
removed, and what is left that is neither a keyword nor called like a function is a metric
name. Enough for the expressions of deploy/ (tests/deploy/test_metric_names.py checks it on
known cases)."""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-f]+|\d+(?:\.\d*)?(?:e[+-]?\d+)?[a-z]*)", re.IGNORECASE)
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "group_left", "group_right"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression, or by Grafana's `label_values(EXPR, label)`."""
    grafana = _LABEL_VALUES.match(expr)
    if grafana:
        expr = grafana.group(1)
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        called = text[match.end() :].lstrip().startswith("(")
        if not called and name.lower() not in KEYWORDS:
            names.add(name)
    return names
