"""deploy/grafana: the dashboard reads the datasource that provisioning creates, is where the
dashboard provider looks for it in deploy/compose.yaml, and its panels are well formed (the
metrics it reads: test_metric_names.py)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "grafana"


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for panel in panels for p in [panel, *_panels(panel.get("panels", []))]]


def test_dashboard_uses_the_provisioned_datasource_and_is_provisioned() -> None:
    dashboard = json.loads((GRAFANA / "gateway.json").read_text())
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    panels = _panels(dashboard["panels"])
    queried = [p for p in panels if p["type"] != "row"]
    assert queried and all(p["targets"] for p in queried)
    used = {json.dumps(p["datasource"], sort_keys=True) for p in queried}
    used |= {json.dumps(t["datasource"], sort_keys=True) for p in queried for t in p["targets"]}
    assert used == {json.dumps({"type": "prometheus", "uid": source["uid"]}, sort_keys=True)}
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))

    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/gateway.yaml").read_text())
    (provider,) = providers["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = {c["target"]: compose["configs"][c["source"]]["file"]
              for c in compose["services"]["grafana"]["configs"]}  # fmt: skip
    dashboard_target = next(t for t, f in mounts.items() if f == "./grafana/gateway.json")
    assert str(PurePosixPath(dashboard_target).parent) == provider["options"]["path"]
    assert mounts["/etc/grafana/provisioning/datasources/prometheus.yaml"] == (
        "./grafana/provisioning/datasources/prometheus.yaml"
    )
    assert mounts["/etc/grafana/provisioning/dashboards/gateway.yaml"] == (
        "./grafana/provisioning/dashboards/gateway.yaml"
    )
