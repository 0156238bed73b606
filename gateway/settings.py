"""Settings from `GATEWAY_*` environment variables (and an optional `gateway.env` file),
API.md §4.

One more variable is read from the environment only, not from here: PROMETHEUS_MULTIPROC_DIR,
which puts the metrics of every gateway process on the host into one scrape
(`gateway.metrics_multiprocess`); prometheus_client itself reads it when first imported."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_WEBHOOK_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_SYNC_SCHEDULE = (10, 30, 60, 300, 900, 1800, 3600)


def _parse_schedule(value: object) -> object:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise ValueError("a schedule needs at least one delay in seconds")
        try:
            delays = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError("a schedule is comma-separated seconds, e.g. 5,300,1800") from None
        if any(d <= 0 for d in delays):
            raise ValueError("every delay in a schedule must be positive")
        return delays
    return value


def _parse_networks(value: object) -> object:
    if isinstance(value, str):
        try:
            return tuple(ip_network(p.strip()) for p in value.split(",") if p.strip())
        except ValueError as exc:
            raise ValueError(f"not a network (e.g. 10.0.0.0/8, 192.0.2.7): {exc}") from None
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_", env_file="gateway.env", extra="ignore", frozen=True
    )

    database_url: str | None = None
    """PostgreSQL URL; unset means the embedded PostgreSQL under `var_dir`."""
    redis_url: str | None = None
    """Redis URL; unset means the embedded Redis under `var_dir`."""
    redis_prefix: str = "gw:"
    """Prefix of every Redis key this gateway writes (tests give each run its own)."""
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None
    """The URL channels and payers reach this gateway at; default http://host:port."""
    routing_file: Path = Path("config/routing.yaml")
    risk_file: Path = Path("config/risk.yaml")
    """Risk rules checked before routing; reloaded like the routing file."""
    config_dir: Path = Path("config")
    """Where adapter keys and certificates named in the routing file are resolved."""
    master_key: SecretStr | None = None
    """32 random bytes, URL-safe base64: encrypts merchants' secrets at rest."""
    admin_token: SecretStr | None = None
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = tuple(
        float(x) for x in DEFAULT_WEBHOOK_RETRY_SCHEDULE
    )
    sync_schedule: Annotated[tuple[float, ...], NoDecode] = tuple(
        float(x) for x in DEFAULT_SYNC_SCHEDULE
    )
    simulators: bool = False
    sim_notify_time_scale: float = Field(1.0, gt=0)
    callback_allow_private: bool = False
    callback_timeout_s: float = Field(10.0, gt=0)
    var_dir: Path = Path("var")
    log_level: str = "info"
    log_json: bool = True
    db_pool_min: int = Field(2, ge=1)
    db_pool_max: int = Field(20, ge=1)
    redis_pool_max: int = Field(64, ge=1)
    """Redis connections per process. A request that finds them all busy waits for one (up
    to `redis_pool_timeout_s`) instead of failing: a burst queues, it does not get 503."""
    redis_pool_timeout_s: float = Field(5.0, gt=0)
    routing_poll_s: float = Field(1.0, gt=0)
    sync_poll_s: float = Field(1.0, gt=0)
    late_payment_auto_refund: bool = False
    """Refund automatically a payment the channel reports paid after the gateway closed it
    (it is always recorded, logged and counted in gateway_late_payments_total)."""
    dispatcher_poll_s: float = Field(1.0, gt=0)
    dispatcher_concurrency: int = Field(32, ge=1)
    key_cache_ttl_s: float = Field(5.0, ge=0, le=60)
    """How long a verified merchant key stays cached in the process: a revoked key may still
    be accepted for this long (at most a minute). A merchant's status and budgets are read
    again after at most 5 s whatever this says."""
    rate_limits_enabled: bool = True
    """Count each merchant's requests against its budgets (API.md §1.7)."""
    rate_limit_payments_per_s: float = Field(100.0, gt=0)
    """Default budget of a merchant's payment creates (`POST /v1/payments`), per second."""
    rate_limit_refunds_per_s: float = Field(20.0, gt=0)
    """Default budget of a merchant's refund creates, per second."""
    rate_limit_other_per_s: float = Field(200.0, gt=0)
    """Default budget of a merchant's other requests (reads included), per second."""
    rate_limit_burst_s: float = Field(2.0, ge=1)
    """How many seconds' worth of its budget a merchant may send at once after a quiet time."""
    auth_failure_limit: int = Field(30, ge=1)
    """Failed authentications a source address may make at once; then it gets this many per
    `auth_failure_window_s`, and its other requests are refused (429) without being
    verified."""
    auth_failure_window_s: float = Field(60.0, gt=0)
    trusted_proxies: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = ()
    """Comma-separated networks of the proxies in front of the gateway (e.g. the load
    balancer's, `10.0.0.0/8`): for a request from one of them, the source address is read from
    X-Forwarded-For (its last address outside these networks). Empty: the peer's address."""
    reuse_port: bool = False
    """SO_REUSEPORT: several gateway processes on one host share the port (the kernel spreads
    connections between them)."""
    background: bool = True
    """Run the background workers (callback dispatcher, routing reload) in this process."""
    migrate_on_start: bool = False
    """Apply the pending migrations when the gateway starts (under the migration lock, so
    several processes starting together apply each once). Off: a gateway whose database lacks
    a migration refuses to start, and `gateway migrate` applies them. `gateway serve --migrate`
    and `gateway demo` turn it on."""

    _check_schedules = field_validator("webhook_retry_schedule", "sync_schedule", mode="before")(
        _parse_schedule
    )
    _check_proxies = field_validator("trusted_proxies", mode="before")(_parse_networks)

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"
