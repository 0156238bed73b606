"""The routing file's schema (pydantic v2), and the checks that span several parts of it.

Shape checks (types, ranges, unknown keys) are pydantic's; the checks that need the whole file
(unknown channels, weights adding up to 100, rules hidden behind broader ones, methods that no
channel of a route serves) are `semantic_errors`. Every message names the path of the
offending value, e.g. ``rules[2].route.channels: unknown channel 'alipay_bak'``.

`enabled: false` is always a valid edit (API.md §4): the errors are those of the file with every
channel enabled, so switching a channel off never makes a file invalid. What it leaves behind
(a rule with no enabled channel, which routing passes over; a default route with none) is in
`semantic_warnings`.

Amounts are integers in minor units (fen for CNY): floats are refused. Fee percentages are
decimals with at most four places (``"0.6"``, ``0.38``), held as `Decimal`, never as floats.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError

METHODS: tuple[str, ...] = ("card", "wechat_qr", "alipay_qr", "unionpay_qr")
ADAPTERS: tuple[str, ...] = ("bank", "wechat", "alipay", "unionpay")
ADAPTER_METHODS: dict[str, frozenset[str]] = {
    "bank": frozenset({"card"}),
    "wechat": frozenset({"wechat_qr"}),
    "alipay": frozenset({"alipay_qr"}),
    "unionpay": frozenset({"unionpay_qr"}),
}
"""Which payment methods each adapter implements; a channel may list only these."""
STRATEGIES: tuple[str, ...] = ("priority", "weighted", "lowest_fee", "success_rate")
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MIN_AMOUNT = 1
MAX_AMOUNT = 10**11
DEFAULT_TIMEZONE = "Asia/Shanghai"

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-4]):([0-5][0-9])$")
_PERCENT_QUANTUM = Decimal("0.0001")


def _err(message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError("routing", message, ctx or None)


# ---- scalar types ---------------------------------------------------------------------------


def _amount(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err("must be an integer amount in minor units (fen), got {got}", got=repr(value))
    if not MIN_AMOUNT <= value <= MAX_AMOUNT:
        raise _err(
            "must be between {lo} and {hi} (minor units), got {got}",
            lo=MIN_AMOUNT,
            hi=MAX_AMOUNT,
            got=value,
        )
    return value


def _fixed_fee(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err("must be an integer fee in minor units (fen), got {got}", got=repr(value))
    if value < 0:
        raise _err("must not be negative, got {got}", got=value)
    return value


def _percent(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise _err('must be a decimal percentage such as "0.6", got {got}', got=repr(value))
    if isinstance(value, float | int):
        text = str(value)  # the shortest repr: what the operator wrote for a YAML number
    elif isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
    elif isinstance(value, Decimal):
        text = str(value)
    else:
        raise _err('must be a decimal percentage such as "0.6", got {got}', got=repr(value))
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise _err(
            'must be a decimal percentage such as "0.6", got {got}', got=repr(value)
        ) from None
    if not number.is_finite() or number != number.quantize(_PERCENT_QUANTUM):
        raise _err("must have at most 4 decimal places, got {got}", got=repr(value))
    if not Decimal(0) <= number <= Decimal(100):
        raise _err("must be between 0 and 100, got {got}", got=repr(value))
    return number.quantize(_PERCENT_QUANTUM)


def _method(value: Any) -> str:
    if value not in METHODS:
        raise _err(
            "unknown method {got} (known: {known})", got=repr(value), known=", ".join(METHODS)
        )
    return str(value)


def _adapter(value: Any) -> str:
    if value not in ADAPTERS:
        raise _err(
            "unknown adapter {got} (known: {known})", got=repr(value), known=", ".join(ADAPTERS)
        )
    return str(value)


def _strategy(value: Any) -> str:
    if value not in STRATEGIES:
        raise _err(
            "unknown strategy {got} (known: {known})",
            got=repr(value),
            known=", ".join(STRATEGIES),
        )
    return str(value)


def _currency(value: Any) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise _err("must be an ISO 4217 currency code such as CNY, got {got}", got=repr(value))
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _err("must be 1 to 64 letters, digits, '_' or '-', got {got}", got=repr(value))
    return value


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _err("must be a string, got {got}", got=repr(value))
    return str(value)


def _one_or_many(value: Any) -> Any:
    """`method: card` and `method: [card, alipay_qr]` both mean a list."""
    if isinstance(value, list):
        if not value:
            raise _err("must not be empty")
        return value
    return [value]


def _non_empty(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise _err("must not be empty")
    return value


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for item in values:
        if item in seen:
            raise _err("lists {got} twice", got=repr(item))
        seen.add(item)
    return values


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise _err("must be an IANA time zone such as Asia/Shanghai, got {got}", got=repr(value))
    try:
        zone(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise _err("unknown time zone {got}", got=repr(value)) from None
    return value


@dataclass(frozen=True, slots=True)
class Window:
    """A local time window, start inclusive, end exclusive, in minutes after midnight (the
    end may be 24:00 = 1440). A window whose start is after its end crosses midnight
    (``22:00-06:00``); ``00:00-24:00`` is the whole day."""

    start: int
    end: int

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _window(value: Any) -> Window:
    if isinstance(value, Window):
        return value
    if not isinstance(value, str) or value.count("-") != 1:
        raise _err('must be a time window "HH:MM-HH:MM", got {got}', got=repr(value))
    start_text, end_text = (part.strip() for part in value.split("-"))
    bounds = []
    for part in (start_text, end_text):
        match = _HHMM.match(part)
        if match is None:
            raise _err('must be a time window "HH:MM-HH:MM", got {got}', got=repr(value))
        minutes = int(match.group(1)) * 60 + int(match.group(2))
        if minutes > 24 * 60:
            raise _err("{got}: hours go from 00:00 to 24:00", got=repr(value))
        bounds.append(minutes)
    start, end = bounds
    if start == 24 * 60:
        raise _err("{got}: a window cannot start at 24:00", got=repr(value))
    if start == end:
        raise _err(
            "{got}: start and end are the same time; leave `time` out to match all day",
            got=repr(value),
        )
    return Window(start, end)


def _day(value: Any) -> str:
    text = value.lower()[:3] if isinstance(value, str) else None
    if text not in DAYS:
        raise _err("unknown day {got} (use {known})", got=repr(value), known=", ".join(DAYS))
    return text


Amount = Annotated[int, PlainValidator(_amount)]
FixedFee = Annotated[int, PlainValidator(_fixed_fee)]
Percent = Annotated[Decimal, PlainValidator(_percent)]
Method = Annotated[str, PlainValidator(_method)]
AdapterName = Annotated[str, PlainValidator(_adapter)]
Currency = Annotated[str, PlainValidator(_currency)]
Strategy = Annotated[str, PlainValidator(_strategy)]
Text = Annotated[str, PlainValidator(_text)]
TimeZoneName = Annotated[str, PlainValidator(_timezone)]
Day = Annotated[str, PlainValidator(_day)]
TimeWindowValue = Annotated[Window, PlainValidator(_window)]
ChannelName = Annotated[str, PlainValidator(_name)]

Methods = Annotated[list[Method], BeforeValidator(_one_or_many), AfterValidator(_unique)]
Currencies = Annotated[list[Currency], BeforeValidator(_one_or_many), AfterValidator(_unique)]
Texts = Annotated[list[Text], BeforeValidator(_one_or_many), AfterValidator(_unique)]
Windows = Annotated[list[TimeWindowValue], BeforeValidator(_one_or_many)]
Days = Annotated[list[Day], BeforeValidator(_one_or_many), AfterValidator(_unique)]
Names = Annotated[list[ChannelName], BeforeValidator(_non_empty)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---- channels -------------------------------------------------------------------------------


class FeeConfig(_Model):
    """What a channel charges per payment: `percent` of the amount (rounded half up to the fen)
    plus `fixed` minor units."""

    percent: Percent = Decimal(0)
    fixed: FixedFee = 0


class ChannelConfig(_Model):
    adapter: AdapterName
    methods: Methods
    currencies: Currencies = Field(default_factory=lambda: ["CNY"])
    min_amount: Amount = MIN_AMOUNT
    max_amount: Amount = MAX_AMOUNT
    fee: FeeConfig = FeeConfig()
    timeout_ms: int = Field(10_000, ge=100, le=300_000)
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)
    """Adapter-specific settings, passed through to the adapter untouched."""

    def serves(self, method: str, currency: str, amount: int) -> bool:
        return (
            self.enabled
            and method in self.methods
            and currency in self.currencies
            and self.min_amount <= amount <= self.max_amount
        )


# ---- conditions -----------------------------------------------------------------------------


class AmountRange(_Model):
    """Inclusive bounds in minor units; either may be left out."""

    min: Amount | None = None
    max: Amount | None = None


class TimeCondition(_Model):
    """Local time of the payment: one window or several (any matches), in `timezone`, on
    `days` (the day a window starts on; all days when left out)."""

    window: Windows
    timezone: TimeZoneName = DEFAULT_TIMEZONE
    days: Days | None = None


def _metadata(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if not value:
        raise _err("must not be empty")
    return {key: _one_or_many(item) for key, item in value.items()}


class Condition(_Model):
    """All the keys given must hold. `all:` needs every sub-condition, `any:` one of them,
    `not:` the sub-condition to fail. A condition with no keys matches every payment."""

    method: Methods | None = None
    currency: Currencies | None = None
    amount: AmountRange | None = None
    merchant: Texts | None = None
    metadata: Annotated[dict[str, Texts], BeforeValidator(_metadata)] | None = None
    time: TimeCondition | None = None
    all_: Annotated[list[Condition], BeforeValidator(_non_empty)] | None = Field(None, alias="all")
    any_: Annotated[list[Condition], BeforeValidator(_non_empty)] | None = Field(None, alias="any")
    not_: Condition | None = Field(None, alias="not")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


# ---- routes and rules -----------------------------------------------------------------------


class RouteConfig(_Model):
    """Where matching payments go. `priority`, `lowest_fee` and `success_rate` take
    `channels: [...]`; `weighted` takes `weights: {channel: percent}` adding up to 100.
    `fallback: [...]` channels are tried after those, in order, whatever the strategy."""

    strategy: Strategy = "priority"
    channels: Names | None = None
    weights: dict[str, Annotated[int, Field(ge=0, le=100)]] | None = None
    fallback: list[ChannelName] = Field(default_factory=list)

    def main_channels(self) -> list[str]:
        if self.weights is not None:
            return list(self.weights)
        return list(self.channels or [])

    def all_channels(self) -> list[str]:
        return [*self.main_channels(), *self.fallback]


class Rule(_Model):
    name: ChannelName
    description: str | None = None
    when: Condition | None = None
    route: RouteConfig


class DefaultRoute(_Model):
    description: str | None = None
    route: RouteConfig


# ---- settings -------------------------------------------------------------------------------


class BreakerSettings(_Model):
    """A channel's circuit opens after `consecutive_failures` failures in a row, or when at
    least `min_calls` calls in the last `window_s` seconds failed in a share of
    `failure_ratio` or more. After `open_s` seconds it lets `half_open_probes` calls through;
    that many successes close it, one failure opens it again."""

    window_s: int = Field(60, ge=1, le=86_400)
    min_calls: int = Field(10, ge=1)
    failure_ratio: float = Field(0.5, gt=0, le=1)
    consecutive_failures: int = Field(5, ge=1)
    open_s: float = Field(30, gt=0, le=86_400)
    half_open_probes: int = Field(1, ge=1, le=100)


class SuccessRateSettings(_Model):
    """For the `success_rate` strategy: success ratios over the last `window_s` seconds; a
    channel with fewer than `min_samples` results there counts as unproven; with probability
    `exploration` a channel other than the best goes first, so every channel keeps being
    measured."""

    window_s: int = Field(300, ge=1, le=86_400)
    exploration: float = Field(0.05, ge=0, le=1)
    min_samples: int = Field(20, ge=1)


class RoutingSettings(_Model):
    max_attempts: int = Field(3, ge=1, le=10)
    """How many channels one payment may be tried at (the first try plus failovers)."""
    breaker: BreakerSettings = BreakerSettings()
    success_rate: SuccessRateSettings = SuccessRateSettings()


class RoutingConfig(_Model):
    channels: dict[str, ChannelConfig]
    rules: list[Rule] = Field(default_factory=list)
    default: DefaultRoute
    settings: RoutingSettings = RoutingSettings()

    def routes(self) -> Iterator[tuple[str, str, RouteConfig]]:
        """(path, rule name, route) for every rule then the default."""
        for index, rule in enumerate(self.rules):
            yield f"rules[{index}].route", rule.name, rule.route
        yield "default.route", "default", self.default.route

    def enabled_channels(self, route: RouteConfig) -> list[str]:
        """The route's channels (main, then fallback) that are known and enabled. A rule whose
        route has none is passed over as if it did not match."""
        return [
            name
            for name in route.all_channels()
            if name in self.channels and self.channels[name].enabled
        ]


# ---- checks across the file -----------------------------------------------------------------


def semantic_errors(config: RoutingConfig) -> list[str]:
    """The errors pydantic cannot see, each as ``path: message``."""
    errors: list[str] = []
    errors += _channel_errors(config)
    errors += _route_errors(config)
    errors += _rule_errors(config)
    return errors


def semantic_warnings(config: RoutingConfig) -> list[str]:
    """Things worth an operator's look that do not make the file invalid, among them what
    disabled channels leave behind: rules passed over, a default route that answers
    no_route, methods or currencies a rule can no longer take."""
    warnings: list[str] = []
    used = {name for _, _, route in config.routes() for name in route.all_channels()}
    for name, channel in config.channels.items():
        if name not in used:
            warnings.append(f"channels.{name}: not used by any route")
        if not channel.enabled:
            warnings.append(f"channels.{name}: disabled (skipped by every route)")
    warnings += _disabled_route_warnings(config)
    served = {m for ch in config.channels.values() if ch.enabled for m in ch.methods}
    for method in METHODS:
        if method not in served:
            warnings.append(
                f"channels: no enabled channel serves {method!r}; such payments get no_route"
            )
    catch_all = _catch_all(config)
    if catch_all is not None:
        index, name = catch_all
        warnings.append(
            f"default: never used, rule {name!r} (rules[{index}]) matches every payment"
        )
    return warnings


def _catch_all(config: RoutingConfig) -> tuple[int, str] | None:
    """(index, name) of the first rule that matches every payment and is not passed over."""
    for index, rule in enumerate(config.rules):
        if covers(rule.when, None) and config.enabled_channels(rule.route):
            return index, rule.name
    return None


def _channel_errors(config: RoutingConfig) -> list[str]:
    errors = []
    if not config.channels:
        errors.append("channels: must name at least one channel")
    for name, channel in config.channels.items():
        path = f"channels.{name}"
        if not _NAME.match(name):
            errors.append(
                f"{path}: a channel name is 1 to 64 letters, digits, '_' or '-' "
                "(it appears in URLs)"
            )
        if name == "default":
            errors.append(f"{path}: 'default' is reserved")
        served = ADAPTER_METHODS[channel.adapter]
        for index, method in enumerate(channel.methods):
            if method not in served:
                errors.append(
                    f"{path}.methods[{index}]: adapter {channel.adapter!r} does not serve "
                    f"{method!r} (it serves {', '.join(sorted(served))})"
                )
        if channel.min_amount > channel.max_amount:
            errors.append(
                f"{path}.min_amount: {channel.min_amount} is above max_amount {channel.max_amount}"
            )
    return errors


def _route_errors(config: RoutingConfig) -> list[str]:
    errors = []
    for path, _, route in config.routes():
        if route.strategy == "weighted":
            if route.channels is not None:
                errors.append(
                    f"{path}.channels: the weighted strategy takes `weights: {{channel: "
                    "percent}` instead of `channels`"
                )
            if route.weights is None:
                errors.append(f"{path}.weights: required by the weighted strategy")
            elif not route.weights:
                errors.append(f"{path}.weights: must not be empty")
            else:
                total = sum(route.weights.values())
                if total != 100:
                    errors.append(f"{path}.weights: weights add up to {total}, not 100")
        else:
            if route.weights is not None:
                errors.append(
                    f"{path}.weights: only the weighted strategy takes weights "
                    f"(this route's strategy is {route.strategy})"
                )
            if route.channels is None:
                errors.append(f"{path}.channels: required by the {route.strategy} strategy")
        seen: dict[str, str] = {}
        listed: list[tuple[str, str]] = []
        if route.weights is not None:
            listed += [(f"{path}.weights.{name}", name) for name in route.weights]
        if route.channels is not None:
            listed += [(f"{path}.channels[{i}]", name) for i, name in enumerate(route.channels)]
        listed += [(f"{path}.fallback[{i}]", name) for i, name in enumerate(route.fallback)]
        for item_path, name in listed:
            field_path = item_path.rsplit("[", 1)[0] if item_path.endswith("]") else item_path
            if name not in config.channels:
                errors.append(f"{field_path}: unknown channel {name!r}")
            elif name in seen:
                errors.append(f"{item_path}: channel {name!r} is already listed at {seen[name]}")
            else:
                seen[name] = item_path
    return errors


def _rule_errors(config: RoutingConfig) -> list[str]:
    """Rule names, rules hidden behind earlier ones, and methods or currencies a rule's route
    cannot take whichever of its channels are enabled (see the module docstring)."""
    errors = []
    names: dict[str, int] = {}
    for index, rule in enumerate(config.rules):
        path = f"rules[{index}]"
        if rule.name == "default":
            errors.append(f"{path}.name: 'default' is reserved for the default route")
        if rule.name in names:
            errors.append(
                f"{path}.name: rule name {rule.name!r} is already used by rules[{names[rule.name]}]"
            )
        else:
            names[rule.name] = index
        for earlier_index, earlier in enumerate(config.rules[:index]):
            if covers(earlier.when, rule.when):
                what = (
                    "matches every payment"
                    if covers(earlier.when, None)
                    else "matches every payment this one would"
                )
                errors.append(
                    f"{path}: rule {rule.name!r} can never match: rule {earlier.name!r} "
                    f"(rules[{earlier_index}]) above it {what}"
                )
                break
        listed = [name for name in rule.route.all_channels() if name in config.channels]
        # no known channel at all: the unknown names are already errors of the route
        if listed:
            errors += _coverage_problems(config, index, listed, "channel")
    return errors


def _coverage_problems(config: RoutingConfig, index: int, names: list[str], what: str) -> list[str]:
    """The methods and currencies that rules[index]'s `when:` asks for and none of the
    channels `names` takes, as ``path: no <what> of this rule's route serves …``."""
    path = f"rules[{index}]"
    when = config.rules[index].when
    channels = [config.channels[name] for name in names]
    problems = []
    for method in sorted(_constrained(when, "method") or ()):
        if not any(method in ch.methods for ch in channels):
            problems.append(f"{path}.when.method: no {what} of this rule's route serves {method!r}")
    for currency in sorted(_constrained(when, "currency") or ()):
        if not any(currency in ch.currencies for ch in channels):
            problems.append(
                f"{path}.when.currency: no {what} of this rule's route accepts {currency!r}"
            )
    return problems


def _disabled_route_warnings(config: RoutingConfig) -> list[str]:
    warnings = []
    for index, rule in enumerate(config.rules):
        path = f"rules[{index}]"
        listed = [name for name in rule.route.all_channels() if name in config.channels]
        enabled = config.enabled_channels(rule.route)
        disabled = ", ".join(name for name in listed if name not in enabled)
        if not enabled:
            warnings.append(
                f"{path}.route: no enabled channel (disabled: {disabled}): rule {rule.name!r} "
                "is passed over, the rules below it decide"
            )
            continue
        for problem in _coverage_problems(config, index, enabled, "enabled channel"):
            warnings.append(f"{problem} (disabled: {disabled}); such payments get no_route")
    default = config.default.route
    if not config.enabled_channels(default) and _catch_all(config) is None:
        disabled = ", ".join(name for name in default.all_channels() if name in config.channels)
        warnings.append(
            f"default.route: no enabled channel (disabled: {disabled}): payments no rule "
            "takes get no_route"
        )
    return warnings


def _constrained(cond: Condition | None, key: Literal["method", "currency"]) -> set[str] | None:
    """The values of `key` a payment must have to match `cond` (None: unconstrained), from
    the condition's own keys and its `all:` parts."""
    if cond is None:
        return None
    result: set[str] | None = None
    own = getattr(cond, key)
    if own is not None:
        result = set(own)
    for part in cond.all_ or ():
        sub = _constrained(part, key)
        if sub is not None:
            result = sub if result is None else result & sub
    return result


def covers(a: Condition | None, b: Condition | None) -> bool:
    """True when every payment matching `b` surely matches `a` (so a rule `b` below a rule `a`
    can never match). Conservative: False when unsure. `None` is the empty condition."""
    if a is None or a.is_empty:
        return True
    if a.not_ is not None:
        return False
    if a.all_ is not None and not all(covers(part, b) for part in a.all_):
        return False
    if a.any_ is not None and not any(covers(part, b) for part in a.any_):
        return False
    return all(_key_covers(a, key, b) for key in _FLAT_KEYS if getattr(a, key) is not None)


_FLAT_KEYS = ("method", "currency", "amount", "merchant", "metadata", "time")


def _key_covers(a: Condition, key: str, b: Condition | None) -> bool:
    """Does `b` (its own keys or any of its `all:` parts) restrict `key` within `a`'s bound?"""
    if b is None:
        return _bound_covers(a, key, None)
    if _bound_covers(a, key, b):
        return True
    return any(_key_covers(a, key, part) for part in b.all_ or ())


def _bound_covers(a: Condition, key: str, b: Condition | None) -> bool:
    if key in ("method", "currency", "merchant"):
        a_values: list[str] = getattr(a, key)
        b_values: list[str] | None = getattr(b, key) if b is not None else None
        return b_values is not None and set(b_values) <= set(a_values)
    if key == "amount":
        assert a.amount is not None
        b_amount = b.amount if b is not None else None
        b_min = (b_amount.min if b_amount else None) or MIN_AMOUNT
        b_max = (b_amount.max if b_amount else None) or MAX_AMOUNT
        a_min = a.amount.min or MIN_AMOUNT
        a_max = a.amount.max or MAX_AMOUNT
        return a_min <= b_min and b_max <= a_max
    if key == "metadata":
        assert a.metadata is not None
        b_meta = b.metadata if b is not None else None
        if b_meta is None:
            return False
        return all(k in b_meta and set(b_meta[k]) <= set(v) for k, v in a.metadata.items())
    if key == "time":
        return b is not None and b.time is not None and b.time == a.time
    raise AssertionError(key)  # pragma: no cover
