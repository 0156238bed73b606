"""Operator-readable text for `gateway routes explain` and `gateway routes check`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from routing.engine import RouteDecision
from routing.fees import fee_for
from routing.loader import ChannelCheck, LoadedRouting, RoutingError, load_routing
from routing.rules import mismatch
from routing.schema import ChannelConfig, Condition, RouteConfig


def explain_text(decision: RouteDecision, loaded: LoadedRouting) -> str:
    """The matched rule (and why the rules above it did not match), the candidates in the
    order they would be tried with the reason and fee of each, and the skipped channels."""
    config = loaded.config
    out = [f"Routing version {loaded.version} ({loaded.path})"]
    facts = decision.facts
    if facts is not None:
        meta = ", ".join(f"{k}={v}" for k, v in sorted(facts.metadata.items())) or "-"
        out.append(
            f"Payment: {facts.method} {facts.amount} {facts.currency}, merchant "
            f"{facts.merchant_id or '-'}, metadata {meta}, at {facts.now.isoformat()}"
        )
        out.append("Rules, first match wins:")
        for index, rule in enumerate(config.rules):
            reason = mismatch(rule.when, facts)
            if reason is None and not config.enabled_channels(rule.route):
                reason = "passed over, no enabled channel in its route"
            mark = "MATCH" if reason is None else f"no: {reason}"
            out.append(f"  rules[{index}] {rule.name}: {mark}")
            if reason is None:
                break
        else:
            out.append("  default: MATCH (no rule matched)")
    where = f"rules[{decision.rule_index}]" if decision.rule_index is not None else "default"
    out.append(f"Matched rule: {decision.rule} ({where}), strategy {decision.strategy}")
    route = _route_of(loaded, decision)
    if route is not None:
        out.append(f"  route: {_describe_route(route)}")

    out.append(f"Candidates, in the order tried (at most {decision.max_attempts} attempts):")
    if not decision.candidates:
        out.append("  (none)")
    for number, cand in enumerate(decision.candidates, start=1):
        beyond = "  [beyond max_attempts]" if number > decision.max_attempts else ""
        out.append(
            f"  {number}. {cand.channel:<20} {cand.adapter:<9} fee {cand.fee:<8} "
            f"{cand.reason}{beyond}"
        )
    if decision.skipped:
        out.append("Skipped:")
        for skip in decision.skipped:
            channel = config.channels.get(skip.channel)
            fee = (
                str(fee_for(channel.fee, max(0, facts.amount)))
                if channel is not None and facts is not None
                else "-"
            )
            adapter = channel.adapter if channel is not None else "?"
            out.append(f"  -  {skip.channel:<20} {adapter:<9} fee {fee:<8} {skip.reason}")
    if decision.candidates:
        first = decision.candidates[0]
        out.append(f"Result: {first.channel} first (fee {first.fee})")
    elif decision.all_circuits_open:
        wait = f", retry after {decision.retry_after_s} s" if decision.retry_after_s else ""
        out.append(
            "Result: every eligible channel's circuit is open: 503 channel_unavailable" + wait
        )
    else:
        out.append("Result: no channel of the route can take this payment: 422 no_route")
    return "\n".join(out) + "\n"


def check_text(
    path: str | Path, env: Mapping[str, str] | None = None, check: ChannelCheck | None = None
) -> tuple[bool, str]:
    """Validate a routing file, each channel with `check` too when given (the gateway's checks
    its adapter settings and key files): (valid, report). The report lists every error with
    its path (and line), or summarises the channels, rules and settings, plus any warnings."""
    try:
        loaded = load_routing(path, env, check)
    except RoutingError as exc:
        count = len(exc.errors)
        out = [f"{path}: INVALID, {count} error{'s' if count != 1 else ''}"]
        for error in exc.errors:
            line = exc.line_of(error)
            out.append(f"  line {line}: {error}" if line is not None else f"  {error}")
        return False, "\n".join(out) + "\n"
    return True, summary_text(loaded)


def summary_text(loaded: LoadedRouting) -> str:
    config = loaded.config
    enabled = sum(1 for ch in config.channels.values() if ch.enabled)
    out = [f"{loaded.path}: valid, version {loaded.version}"]
    out.append(f"Channels: {len(config.channels)} ({enabled} enabled)")
    for name, channel in config.channels.items():
        out.append(f"  {name:<20} {_describe_channel(channel)}")
    out.append(f"Rules: {len(config.rules)}, first match wins, then the default")
    for index, rule in enumerate(config.rules):
        out.append(f"  rules[{index}] {rule.name}: when {_describe_condition(rule.when)}")
        out.append(f"      -> {_describe_route(rule.route)}")
    out.append(f"  default -> {_describe_route(config.default.route)}")
    s = config.settings
    b, sr = s.breaker, s.success_rate
    out.append(
        f"Settings: max_attempts {s.max_attempts}; breaker: opens after "
        f"{b.consecutive_failures} failures in a row or >= {b.failure_ratio:.0%} failures of "
        f">= {b.min_calls} calls in {b.window_s} s, open {b.open_s:g} s, "
        f"{b.half_open_probes} half-open probe(s); success_rate: {sr.window_s} s window, "
        f"{sr.min_samples} samples, exploration {sr.exploration:.0%}"
    )
    if loaded.warnings:
        out.append("Warnings:")
        out += [f"  - {w}" for w in loaded.warnings]
    return "\n".join(out) + "\n"


def _route_of(loaded: LoadedRouting, decision: RouteDecision) -> RouteConfig | None:
    if decision.rule_index is None:
        return loaded.config.default.route
    rules = loaded.config.rules
    if 0 <= decision.rule_index < len(rules):
        return rules[decision.rule_index].route
    return None  # pragma: no cover - a decision from another version


def _describe_channel(ch: ChannelConfig) -> str:
    fee = f"{ch.fee.percent.normalize():f}%"
    if ch.fee.fixed:
        fee += f" + {ch.fee.fixed}"
    state = "enabled" if ch.enabled else "DISABLED"
    return (
        f"{ch.adapter:<9} {','.join(ch.methods):<12} {','.join(ch.currencies):<8} "
        f"{ch.min_amount}..{ch.max_amount}  fee {fee}  timeout {ch.timeout_ms} ms  {state}"
    )


def _describe_route(route: RouteConfig) -> str:
    if route.weights is not None:
        main = ", ".join(f"{name} {weight}%" for name, weight in route.weights.items())
    else:
        main = ", ".join(route.channels or [])
    text = f"{route.strategy}: {main}"
    if route.fallback:
        text += f"; fallback: {', '.join(route.fallback)}"
    return text


def _describe_condition(cond: Condition | None) -> str:
    if cond is None or cond.is_empty:
        return "always"
    parts: list[str] = []
    if cond.method is not None:
        parts.append(f"method in [{', '.join(cond.method)}]")
    if cond.currency is not None:
        parts.append(f"currency in [{', '.join(cond.currency)}]")
    if cond.amount is not None:
        low = cond.amount.min if cond.amount.min is not None else ""
        high = cond.amount.max if cond.amount.max is not None else ""
        parts.append(f"amount {low}..{high}")
    if cond.merchant is not None:
        parts.append(f"merchant in [{', '.join(cond.merchant)}]")
    if cond.metadata is not None:
        for key, values in cond.metadata.items():
            parts.append(f"metadata.{key} in [{', '.join(values)}]")
    if cond.time is not None:
        windows = ", ".join(str(w) for w in cond.time.window)
        days = f" on {','.join(cond.time.days)}" if cond.time.days else ""
        parts.append(f"time {windows} {cond.time.timezone}{days}")
    if cond.all_ is not None:
        parts.append("all(" + "; ".join(_describe_condition(c) for c in cond.all_) + ")")
    if cond.any_ is not None:
        parts.append("any(" + " | ".join(_describe_condition(c) for c in cond.any_) + ")")
    if cond.not_ is not None:
        parts.append(f"not({_describe_condition(cond.not_)})")
    return " and ".join(parts)
