"""Every metric the dashboard (deploy/grafana/gateway.json) and the alert rules
(deploy/prometheus/alerts.yml) read is exported by the gateway: a real gateway makes a
payment, its /metrics is scraped, and the names in their expressions are compared with the
scrape (a histogram exports `_bucket`, `_sum` and `_count`; a labelled metric nobody has
incremented yet is exported as its `# TYPE` line alone).

The metrics the alerts need and the gateway does not export yet are listed in
PROPOSED_METRICS (docs/operations.md, "Metrics the alerts need"): a name neither exported nor
listed fails, and so does a listed one that the gateway now exports (drop it from the list)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.promql import metric_names
from tests.fixtures import Gateway
from tests.support import MerchantClient

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

PROPOSED_METRICS = {
    "gateway_payment_pending_overdue_seconds": "gauge",
    "gateway_callback_oldest_undelivered_seconds": "gauge",
    "gateway_refunds_pending_approval": "gauge",
    "gateway_refund_pending_approval_oldest_seconds": "gauge",
    "gateway_reconciliation_discrepancies": "gauge{channel, outcome}",
    "gateway_database_up": "gauge",
    "gateway_redis_up": "gauge",
}
"""Not exported yet: name -> type and labels."""

PROMETHEUS_OWN = {"up"}
"""Series Prometheus writes itself for every target."""

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "untyped": ("",),
}


def _walk_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found += _walk_panels(panel.get("panels", []))
    return found


def dashboard_expressions() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in _walk_panels(data["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in data.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """(every sample name the exposition can carry, the names it carries samples for)."""
    declared: set[str] = set()
    sampled: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            declared |= {base + suffix for suffix in SUFFIXES[kind]}
            declared.add(family)
        elif line and not line.startswith("#"):
            sampled.add(line.split("{", 1)[0].split(" ", 1)[0])
    return declared | sampled, sampled


def test_the_extractor_finds_metrics_and_nothing_else() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (route, le) (rate(gateway_http_request_seconds_bucket{route=~"/v1/.*", instance=~"$instance"}[$__rate_interval]))) > 2.5'
    ) == {"gateway_http_request_seconds_bucket"}
    assert metric_names(
        "sum by (channel) (x_total unless x_total offset 30m) > 0 or max without (instance) (y) == 1e3"
    ) == {"x_total", "y"}
    assert metric_names('label_values(up{job="gateway"}, instance)') == {"up"}
    assert metric_names('a{l="b c"} / on (l) group_left (m) b:recorded') == {"a", "b:recorded"}
    assert metric_names("count(count by (version) (gateway_routing_info))") == {
        "gateway_routing_info"
    }


async def test_dashboard_and_alert_metrics_are_exported_by_the_gateway(
    gateway: Gateway, client: MerchantClient
) -> None:
    created = await client.create_payment(method="wechat_qr")
    assert created.status == 201, created.body
    async with gateway.http.get(f"{gateway.url}/metrics") as reply:
        assert reply.status == 200
        exposition = await reply.text()
    exported, sampled = exported_names(exposition)
    # the payment went through: the scrape is the live gateway's, not an empty registry
    assert {"gateway_http_requests_total", "gateway_channel_calls_total"} <= sampled
    assert 'route="/v1/payments"' in exposition

    used: dict[str, set[str]] = {}
    for source, exprs in (("dashboard", dashboard_expressions()), ("alerts", alert_expressions())):
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(source)
    assert used, "no metric found in the dashboard or the alerts"
    missing = {name: sorted(where) for name, where in used.items()
               if name not in exported and name not in PROMETHEUS_OWN}  # fmt: skip
    unexpected = {name: where for name, where in missing.items() if name not in PROPOSED_METRICS}
    assert unexpected == {}, "metrics neither exported by the gateway nor proposed"
    now_exported = sorted(set(PROPOSED_METRICS) & exported)
    assert now_exported == [], "exported now: remove from PROPOSED_METRICS"
    unused = sorted(set(PROPOSED_METRICS) - set(used))
    assert unused == [], "proposed metrics that nothing reads"


def test_the_proposed_metrics_are_documented() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    for name in PROPOSED_METRICS:
        assert f"| `{name}` |" in guide, name
