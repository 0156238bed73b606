"""deploy/prometheus: `promtool check config` and `check rules`, the rules' unit tests
(`promtool test rules deploy/prometheus/tests/*.yml`), and that those tests cover every alert:
each one fires in some faulty series and is expected silent in the healthy one; each names
its section of docs/operations.md.

promtool comes with Debian's `prometheus` package; without it the promtool tests skip (CI
installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
HEALTHY = PROMETHEUS / "tests" / "healthy.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package `prometheus`: apt-get install prometheus)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def expectations(path: Path) -> list[tuple[str, bool]]:
    """(alertname, fires) for every alert_rule_test in a promtool test file."""
    found = []
    for test in yaml.safe_load(path.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            found.append((case["alertname"], bool(case.get("exp_alerts"))))
    return found


@needs_promtool
def test_prometheus_config_and_its_rule_files_are_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@needs_promtool
def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_rules())} rules found" in result.stdout


@needs_promtool
@pytest.mark.parametrize("path", RULE_TESTS, ids=[p.name for p in RULE_TESTS])
def test_promtool_rule_unit_tests_pass(path: Path) -> None:
    result = promtool("test", "rules", str(path.relative_to(PROMETHEUS)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_fires_in_a_test_and_stays_silent_when_healthy() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    firing = {name for path in RULE_TESTS for name, fires in expectations(path) if fires}
    silent_when_healthy = {name for name, fires in expectations(HEALTHY) if not fires}
    tested = {name for path in RULE_TESTS for name, _ in expectations(path)}
    assert sorted(names - firing) == [], "alerts no test makes fire"
    assert sorted(names - silent_when_healthy) == [], "alerts healthy.yml does not check"
    assert not any(fires for _, fires in expectations(HEALTHY)), "healthy.yml expects an alert"
    assert sorted(tested - names) == [], "tests of alerts that do not exist"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    anchors = _anchors(OPERATIONS.read_text())
    for rule in alert_rules():
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        runbook = rule["annotations"]["runbook"]
        page, _, anchor = runbook.partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in {OPERATIONS}"
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
