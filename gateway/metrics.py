"""Prometheus metrics, served at /metrics (`exposition`).

One process: the default registry. Several gateway processes on one host, with
`PROMETHEUS_MULTIPROC_DIR` set (`gateway.metrics_multiprocess`, prepared before this module is
imported): every process writes its values to files there, and a scrape of any of them
returns the sum over all of them — counters and histograms added up, each gauge combined as
its `multiprocess_mode` says (ignored in single-process mode).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway import metrics_multiprocess

REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
REQUEST_LATENCY = Histogram(
    "gateway_http_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CHANNEL_CALLS = Counter(
    "gateway_channel_calls_total", "Calls to channels", ["channel", "operation", "outcome"]
)
CHANNEL_LATENCY = Histogram(
    "gateway_channel_call_seconds", "Channel call latency", ["channel", "operation"]
)
ROUTING_DECISIONS = Counter(
    "gateway_routing_decisions_total", "Routing decisions", ["rule", "channel"]
)
FAILOVERS = Counter("gateway_failovers_total", "Attempts failed over", ["channel"])
PAYMENT_TRANSITIONS = Counter(
    "gateway_payment_transitions_total", "Payment state changes", ["status"]
)
NOTIFICATIONS = Counter(
    "gateway_channel_notifications_total", "Channel notifications", ["channel", "result"]
)
LATE_PAYMENTS = Counter(
    "gateway_late_payments_total",
    "Payments the channel reports paid after the gateway closed or failed them",
    ["channel"],
)
AMOUNT_MISMATCHES = Counter(
    "gateway_channel_amount_mismatches_total",
    "Successes a channel reported (answers, queries, notifications) refused because their amount"
    " or currency differs from the payment's or refund's, or is missing",
    ["channel", "kind", "reason"],  # kind: payment | refund; reason: amount | currency | missing
)
NEEDS_OPERATOR = Counter(
    "gateway_channel_needs_operator_total",
    "Payments and refunds a channel reports neither succeeded nor failed though money may have"
    " moved, recorded for an operator (once each)",
    ["channel", "kind"],
)
ATTEMPT_CLOSES = Counter(
    "gateway_given_up_attempt_closes_total",
    "Orders of given-up attempts the status sync tried to close at their channel",
    ["channel", "result"],  # closed | paid | unconfirmed (retried with backoff)
)
CALLBACK_ATTEMPTS = Counter(
    "gateway_callback_attempts_total", "Callback delivery attempts", ["outcome"]
)
CALLBACK_LATENCY = Histogram("gateway_callback_attempt_seconds", "Callback attempt latency")
# the database's state, measured by every process's dispatcher: the latest reading is the truth
CALLBACK_QUEUE = Gauge(
    "gateway_callback_queue_depth",
    "Callback deliveries due now",
    multiprocess_mode="livemostrecent",
)
CALLBACK_OLDEST_AGE = Gauge(
    "gateway_callback_oldest_due_seconds",
    "Age of the oldest due callback delivery",
    multiprocess_mode="livemostrecent",
)
ROUTING_RELOAD_FAILURES = Counter(
    "gateway_routing_reload_failures_total", "Routing files refused on reload"
)
ROUTING_VERSION = Gauge(
    "gateway_routing_info",
    "The routing version in force: 1 for the version a process serves, 0 for one it left",
    ["version"],
    multiprocess_mode="liveall",  # one sample per live process (a `pid` label): who serves what
)
AUTH_FAILURES = Counter("gateway_auth_failures_total", "Refused signatures", ["code"])
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused over a budget: a merchant's (payments, refunds, other) or a source"
    " address's failed authentications (auth_failures)",
    ["budget"],
)
SYNC_BACKLOG = Gauge(
    "gateway_sync_backlog",
    "Open attempts due for a status query",
    multiprocess_mode="livemostrecent",
)
EXPIRED = Counter("gateway_payments_expired_total", "Pending payments closed at expiry")
RISK_REJECTIONS = Counter(
    "gateway_risk_rejections_total", "Payments refused by a risk rule", ["rule"]
)
RISK_RELOAD_FAILURES = Counter("gateway_risk_reload_failures_total", "Risk files refused on reload")
BREAKER_STATE = Gauge(
    "gateway_channel_breaker_state",
    "Circuit breaker per channel (shared by every process) as last read from Redis: 0 closed,"
    " 1 half-open, 2 open",
    ["channel"],
    multiprocess_mode="livemostrecent",
)


def exposition() -> tuple[bytes, str]:
    """(body, content type) of a scrape: this process's metrics, or in multiprocess mode those
    of every gateway process on the host (dead processes marked first)."""
    folder = metrics_multiprocess.directory()
    if folder is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    from prometheus_client import multiprocess

    metrics_multiprocess.mark_dead_processes(folder)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(folder))  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
